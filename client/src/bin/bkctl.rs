//! `bkctl`: a BuildKit client whose subcommands, flags and output follow
//! `buildctl`, so scripts and tests can use either against any daemon.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use bk_client::solve_opts::BuildFlags;
use bk_client::{Client, TlsOptions};
use bk_proto::moby::buildkit::v1::{PruneRequest, UsageRecord};
use clap::{Args, Parser, Subcommand};
use prost::Message;

#[derive(Parser)]
#[command(
    name = "bkctl",
    about = "build utility for BuildKit daemons (buildctl-compatible)",
    version
)]
struct Cli {
    /// Enable debug output in logs.
    #[arg(long, global = true)]
    debug: bool,
    /// buildkitd address.
    #[arg(
        long,
        env = "BUILDKIT_HOST",
        default_value = "unix:///run/buildkit/buildkitd.sock",
        global = true
    )]
    addr: String,
    /// Log formatter: json or text.
    #[arg(long = "log-format", default_value = "text", global = true)]
    log_format: String,
    /// buildkitd server name for certificate validation.
    #[arg(long, global = true)]
    tlsservername: Option<String>,
    /// CA certificate for validation.
    #[arg(long, global = true)]
    tlscacert: Option<PathBuf>,
    /// Client certificate.
    #[arg(long, global = true)]
    tlscert: Option<PathBuf>,
    /// Client key.
    #[arg(long, global = true)]
    tlskey: Option<PathBuf>,
    /// Directory containing ca.pem, cert.pem, key.pem (or ca.crt, tls.crt, tls.key).
    #[arg(long, global = true)]
    tlsdir: Option<PathBuf>,
    /// Timeout backend connection after value seconds.
    #[arg(long, default_value_t = 5, global = true)]
    timeout: u64,
    /// Block RPCs until the connection becomes available.
    #[arg(long, global = true)]
    wait: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Debug utilities.
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
    },
    /// Disk usage.
    Du(DuArgs),
    /// Clean up build cache.
    Prune(PruneArgs),
    /// Build.
    #[command(alias = "b")]
    Build(Box<BuildArgs>),
}

#[derive(Subcommand)]
enum DebugCommand {
    /// List workers.
    Workers {
        #[arg(long)]
        filter: Vec<String>,
        #[arg(short, long)]
        verbose: bool,
        #[arg(long)]
        format: Option<String>,
    },
    /// Display internal information.
    Info {
        #[arg(long)]
        format: Option<String>,
    },
}

#[derive(Args)]
struct DuArgs {
    #[arg(long)]
    filter: Vec<String>,
    #[arg(short, long)]
    verbose: bool,
    #[arg(long)]
    format: Option<String>,
}

#[derive(Args)]
struct PruneArgs {
    /// Keep data newer than this limit (Go duration, e.g. 24h).
    #[arg(long = "keep-duration")]
    keep_duration: Option<String>,
    /// Keep data below this limit (in MB).
    #[arg(long = "keep-storage")]
    keep_storage: Option<f64>,
    #[arg(long = "reserved-space")]
    reserved_space: Option<f64>,
    #[arg(long = "max-used-space")]
    max_used_space: Option<f64>,
    #[arg(long = "min-free-space")]
    min_free_space: Option<f64>,
    #[arg(long)]
    filter: Vec<String>,
    /// Include internal/frontend references.
    #[arg(long)]
    all: bool,
    #[arg(short, long)]
    verbose: bool,
    #[arg(long)]
    format: Option<String>,
}

#[derive(Args)]
struct BuildArgs {
    #[arg(short, long)]
    output: Vec<String>,
    #[arg(long, default_value = "auto")]
    progress: String,
    #[arg(long)]
    trace: Option<PathBuf>,
    #[arg(long)]
    local: Vec<String>,
    #[arg(long = "oci-layout")]
    oci_layout: Vec<String>,
    #[arg(long)]
    frontend: Option<String>,
    #[arg(long)]
    opt: Vec<String>,
    #[arg(long = "no-cache")]
    no_cache: bool,
    #[arg(long = "export-cache")]
    export_cache: Vec<String>,
    #[arg(long = "import-cache")]
    import_cache: Vec<String>,
    #[arg(long)]
    secret: Vec<String>,
    #[arg(long)]
    allow: Vec<String>,
    #[arg(long)]
    ssh: Vec<String>,
    #[arg(long = "metadata-file")]
    metadata_file: Option<PathBuf>,
    #[arg(long = "source-policy-file")]
    source_policy_file: Option<PathBuf>,
    #[arg(long = "proxy-network")]
    proxy_network: bool,
    #[arg(long = "ref-file")]
    ref_file: Option<PathBuf>,
    #[arg(long = "registry-auth-tlscontext")]
    registry_auth_tlscontext: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.debug { "debug" } else { "warn" };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(level)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let mut tls = cli.tlsdir.as_deref().map(TlsOptions::from_dir);
    if cli.tlscacert.is_some() || cli.tlscert.is_some() || cli.tlskey.is_some() {
        let t = tls.get_or_insert_with(TlsOptions::default);
        t.ca = cli.tlscacert.clone().or(t.ca.take());
        t.cert = cli.tlscert.clone().or(t.cert.take());
        t.key = cli.tlskey.clone().or(t.key.take());
    }
    if let Some(t) = tls.as_mut() {
        t.server_name = cli.tlsservername.clone();
    }
    let timeout = Duration::from_secs(cli.timeout.max(1));
    loop {
        match Client::connect(&cli.addr, tls.as_ref(), timeout).await {
            Ok(client) => return Ok(client),
            Err(e @ bk_client::ClientError::Connect { .. }) if cli.wait => {
                tracing::debug!("{e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = connect(&cli).await?;
    let mut out = std::io::stdout().lock();
    match &cli.command {
        Command::Debug {
            command:
                DebugCommand::Workers {
                    filter,
                    verbose,
                    format,
                },
        } => {
            let workers = client.list_workers(filter.clone()).await?;
            if format.as_deref() == Some("json") || format.as_deref() == Some("{{json .}}") {
                let json: Vec<_> = workers.iter().map(worker_json).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
            } else if *verbose {
                for w in &workers {
                    print_worker_verbose(&mut out, w)?;
                }
            } else {
                let mut rows = vec![vec!["ID".to_string(), "PLATFORMS".to_string()]];
                for w in &workers {
                    rows.push(vec![w.id.clone(), platforms(w)]);
                }
                write_table(&mut out, &rows)?;
            }
        }
        Command::Debug {
            command: DebugCommand::Info { format },
        } => {
            let v = client.info().await?;
            if format.as_deref() == Some("json") {
                let json = serde_json::json!({"buildkitVersion": {"package": v.package, "version": v.version, "revision": v.revision}});
                writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
            } else {
                writeln!(out, "BuildKit: {} {} {}", v.package, v.version, v.revision)?;
            }
        }
        Command::Du(args) => {
            let records = client.disk_usage(args.filter.clone()).await?;
            if args.format.as_deref() == Some("json") {
                let json: Vec<_> = records.iter().map(record_json).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
            } else {
                print_usage(&mut out, &records, args.verbose)?;
                print_summary(&mut out, &records)?;
            }
        }
        Command::Prune(args) => {
            let mb = |v: Option<f64>| v.map(|mb| (mb * 1e6) as i64).unwrap_or(0);
            let keep_duration = match &args.keep_duration {
                Some(d) => humantime::parse_duration(d)
                    .with_context(|| format!("invalid --keep-duration {d:?}"))?
                    .as_nanos() as i64,
                None => 0,
            };
            let request = PruneRequest {
                filter: args.filter.clone(),
                all: args.all,
                keep_duration,
                reserved_space: mb(args.reserved_space.or(args.keep_storage)),
                max_used_space: mb(args.max_used_space),
                min_free_space: mb(args.min_free_space),
            };
            let removed = client.prune(request).await?;
            if args.verbose || args.format.is_none() {
                print_usage(&mut out, &removed, args.verbose)?;
            }
            let total: i64 = removed.iter().map(|r| r.size).sum();
            write_table(&mut out, &[vec!["Total:".into(), human_size(total)]])?;
        }
        Command::Build(args) => build(&client, args).await?,
    }
    Ok(())
}

async fn build(client: &Client, args: &BuildArgs) -> anyhow::Result<()> {
    let flags = BuildFlags {
        output: args.output.clone(),
        local: args.local.clone(),
        oci_layout: args.oci_layout.clone(),
        frontend: args.frontend.clone(),
        opt: args.opt.clone(),
        no_cache: args.no_cache,
        export_cache: args.export_cache.clone(),
        import_cache: args.import_cache.clone(),
        secret: args.secret.clone(),
        allow: args.allow.clone(),
        ssh: args.ssh.clone(),
    };
    if !["auto", "plain", "tty", "rawjson", "quiet"].contains(&args.progress.as_str()) {
        bail!("invalid progress mode {:?}", args.progress);
    }
    let definition = if args.frontend.is_none() {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("failed to read LLB from stdin")?;
        Some(
            bk_proto::pb::Definition::decode(bytes.as_slice())
                .context("stdin is not an LLB definition")?,
        )
    } else {
        None
    };
    let build_ref = bk_client_id()?;
    let session_id = bk_client_id()?;
    let prepared = flags
        .to_request(definition, &build_ref, &session_id)
        .map_err(anyhow::Error::msg)?;
    if let Some(path) = &args.ref_file {
        std::fs::write(path, &build_ref)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    let response = client.build(prepared, plain_progress()).await;
    let response = response.context("failed to solve")?;
    if let Some(path) = &args.metadata_file {
        let json = serde_json::to_string_pretty(&response.exporter_response)?;
        std::fs::write(path, json)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    Ok(())
}

/// Plain progress: a line when a vertex starts and one when it ends (each
/// once, however many updates repeat them), logs as they come.
fn plain_progress() -> impl FnMut(bk_proto::moby::buildkit::v1::StatusResponse) + Send + 'static {
    let mut last: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    move |update| {
        for v in update.vertexes {
            let line = if v.completed.is_some() {
                let state = if !v.error.is_empty() {
                    format!("ERROR: {}", v.error)
                } else if v.cached {
                    "CACHED".to_string()
                } else {
                    "DONE".to_string()
                };
                format!("{} {state}", v.name)
            } else if v.started.is_some() {
                v.name.clone()
            } else {
                continue;
            };
            if last.get(&v.digest) != Some(&line) {
                eprintln!("{line}");
                last.insert(v.digest, line);
            }
        }
        for log in update.logs {
            eprint!("{}", String::from_utf8_lossy(&log.msg));
        }
    }
}

fn bk_client_id() -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut bytes = [0u8; 25];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[(*b as usize) % 36] as char)
        .collect())
}

fn platforms(w: &bk_proto::moby::buildkit::v1::types::WorkerRecord) -> String {
    w.platforms
        .iter()
        .map(|p| {
            if p.variant.is_empty() {
                format!("{}/{}", p.os, p.architecture)
            } else {
                format!("{}/{}/{}", p.os, p.architecture, p.variant)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn worker_json(w: &bk_proto::moby::buildkit::v1::types::WorkerRecord) -> serde_json::Value {
    serde_json::json!({
        "ID": w.id,
        "Labels": w.labels,
        "Platforms": platforms(w).split(',').collect::<Vec<_>>(),
        "GCPolicy": w.gc_policy.iter().map(|p| serde_json::json!({
            "All": p.all, "Filters": p.filters, "KeepDuration": p.keep_duration,
            "ReservedSpace": p.reserved_space, "MaxUsedSpace": p.max_used_space, "MinFreeSpace": p.min_free_space,
        })).collect::<Vec<_>>(),
    })
}

fn record_json(r: &UsageRecord) -> serde_json::Value {
    serde_json::json!({
        "ID": r.id, "Mutable": r.mutable, "InUse": r.in_use, "Size": r.size,
        "Description": r.description, "UsageCount": r.usage_count,
        "RecordType": r.record_type, "Shared": r.shared, "Parents": r.parents,
    })
}

fn print_worker_verbose(
    out: &mut impl Write,
    w: &bk_proto::moby::buildkit::v1::types::WorkerRecord,
) -> std::io::Result<()> {
    let mut rows = vec![
        vec!["ID:".to_string(), w.id.clone()],
        vec!["Platforms:".to_string(), platforms(w)],
    ];
    if let Some(v) = &w.buildkit_version {
        rows.push(vec![
            "BuildKit:".to_string(),
            format!("{} {} {}", v.package, v.version, v.revision),
        ]);
    }
    rows.push(vec!["Labels:".to_string()]);
    for (k, v) in &w.labels {
        rows.push(vec![String::new(), format!("{k}:"), v.clone()]);
    }
    for (i, p) in w.gc_policy.iter().enumerate() {
        rows.push(vec![format!("GC Policy rule#{i}:")]);
        rows.push(vec![String::new(), "All:".into(), p.all.to_string()]);
        if !p.filters.is_empty() {
            rows.push(vec![String::new(), "Filters:".into(), p.filters.join(" ")]);
        }
        if p.keep_duration > 0 {
            rows.push(vec![
                String::new(),
                "Keep duration:".into(),
                go_duration(Duration::from_nanos(p.keep_duration as u64)),
            ]);
        }
        for (name, value) in [
            ("Reserved space:", p.reserved_space),
            ("Max used space:", p.max_used_space),
            ("Min free space:", p.min_free_space),
        ] {
            if value > 0 {
                rows.push(vec![String::new(), name.into(), human_size(value)]);
            }
        }
    }
    write_table(out, &rows)?;
    writeln!(out)
}

fn print_usage(
    out: &mut impl Write,
    records: &[UsageRecord],
    verbose: bool,
) -> std::io::Result<()> {
    if verbose {
        for r in records {
            let mut rows = vec![
                vec!["ID:".to_string(), r.id.clone()],
                vec!["Parents:".to_string(), r.parents.join(";")],
                vec![
                    "Created at:".to_string(),
                    r.created_at.as_ref().map(timestamp).unwrap_or_default(),
                ],
                vec!["Mutable:".to_string(), r.mutable.to_string()],
                vec!["Reclaimable:".to_string(), (!r.in_use).to_string()],
                vec!["Shared:".to_string(), r.shared.to_string()],
                vec!["Size:".to_string(), human_size(r.size)],
            ];
            if !r.description.is_empty() {
                rows.push(vec!["Description:".to_string(), r.description.clone()]);
            }
            rows.push(vec!["Usage count:".to_string(), r.usage_count.to_string()]);
            if let Some(t) = &r.last_used_at {
                rows.push(vec!["Last used:".to_string(), timestamp(t)]);
            }
            if !r.record_type.is_empty() {
                rows.push(vec!["Type:".to_string(), r.record_type.clone()]);
            }
            write_table(out, &rows)?;
            writeln!(out)?;
        }
        return Ok(());
    }
    let mut rows = vec![vec![
        "ID".to_string(),
        "RECLAIMABLE".to_string(),
        "SIZE".to_string(),
        "LAST ACCESSED".to_string(),
    ]];
    for r in records {
        let id = if r.mutable {
            format!("{}*", r.id)
        } else {
            r.id.clone()
        };
        rows.push(vec![
            id,
            (!r.in_use).to_string(),
            human_size(r.size),
            r.last_used_at.as_ref().map(timestamp).unwrap_or_default(),
        ]);
    }
    write_table(out, &rows)
}

fn print_summary(out: &mut impl Write, records: &[UsageRecord]) -> std::io::Result<()> {
    let total: i64 = records.iter().map(|r| r.size).sum();
    let shared: i64 = records.iter().filter(|r| r.shared).map(|r| r.size).sum();
    let reclaimable: i64 = records.iter().filter(|r| !r.in_use).map(|r| r.size).sum();
    let mut rows = Vec::new();
    if shared > 0 {
        rows.push(vec!["Shared:".to_string(), human_size(shared)]);
        rows.push(vec!["Private:".to_string(), human_size(total - shared)]);
    }
    rows.push(vec!["Reclaimable:".to_string(), human_size(reclaimable)]);
    rows.push(vec!["Total:".to_string(), human_size(total)]);
    write_table(out, &rows)
}

fn timestamp(t: &prost_types::Timestamp) -> String {
    let time =
        std::time::UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Aligns columns with three spaces between them. Like Go's tabwriter as
/// buildctl uses it, alignment holds within a run of consecutive rows with
/// the same number of cells, so a nested block aligns on its own.
fn write_table(out: &mut impl Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    for block in rows.chunk_by(|a, b| a.len() == b.len()) {
        let columns = block[0].len();
        let mut widths = vec![0; columns];
        for row in block {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        for row in block {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 < row.len() {
                    line.push_str(&format!("{cell:<width$}   ", width = widths[i]));
                } else {
                    line.push_str(cell);
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
    }
    Ok(())
}

/// Decimal sizes with four significant digits, as Docker's HumanSize prints.
fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    let integer_digits = format!("{:.0}", value.trunc()).len();
    let decimals = 4usize.saturating_sub(integer_digits);
    let mut text = format!("{value:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{}", UNITS[unit])
}

/// Go's `time.Duration` string form (`48h0m0s`).
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}
