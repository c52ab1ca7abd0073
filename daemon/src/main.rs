//! `buildkitd`: parses the command line and config, then runs the daemon.
//! Usage errors print one line and exit 2; start-up failures exit 1.

use std::process::ExitCode;

use bk_daemon::{cli, config, settings::Settings};

fn main() -> ExitCode {
    let flags = match cli::parse(std::env::args_os()) {
        Ok(flags) => flags,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("buildkitd: {}", cli::one_line(&e));
            return ExitCode::from(2);
        }
    };
    let config_path = flags
        .config
        .clone()
        .unwrap_or_else(|| "/etc/buildkit/buildkitd.toml".to_string());
    let loaded = match config::load_file(config_path.as_ref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("buildkitd: {e}");
            return ExitCode::from(1);
        }
    };
    let settings = match Settings::resolve(&flags, &loaded.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("buildkitd: {e}");
            return ExitCode::from(2);
        }
    };
    bk_daemon::init_logging(&settings);
    for key in &loaded.unknown_keys {
        tracing::warn!(config = %config_path, key = %key, "unknown config key ignored");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("buildkitd: failed to start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(bk_daemon::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("buildkitd: {e:#}");
            ExitCode::from(1)
        }
    }
}
