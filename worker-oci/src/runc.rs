//! The `runc` command line: run a bundle in the foreground, kill, delete,
//! list. Containers live under the worker's own `--root`, so listing it
//! shows exactly this daemon's containers.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::ExecError;

/// One runc binary and state directory.
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
}

impl Runc {
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Runc {
        Runc {
            binary: binary.into(),
            root: root.into(),
        }
    }

    /// The state directory (`runc --root`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Starts `runc run` for the bundle with the step's output piped.
    pub fn spawn_run(&self, bundle: &Path, id: &str) -> Result<Child, ExecError> {
        let mut cmd = self.command();
        cmd.arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(id)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd.spawn()
            .map_err(|e| ExecError::Runtime(format!("starting {}: {e}", self.binary.display())))
    }

    /// Sends SIGKILL to every process of the container.
    pub async fn kill(&self, id: &str) {
        let _ = self
            .command()
            .args(["kill", id, "KILL"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }

    /// Removes the container, killing it first if it still runs.
    pub async fn delete(&self, id: &str) {
        let _ = self
            .command()
            .args(["delete", "--force", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }

    /// The ids of the containers under this root.
    pub async fn list(&self) -> Result<Vec<String>, ExecError> {
        if !self.root.exists() {
            return Ok(Vec::new());
        }
        let out = self
            .command()
            .args(["list", "--format", "json"])
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| ExecError::Runtime(format!("runc list: {e}")))?;
        if !out.status.success() {
            return Err(ExecError::Runtime(format!(
                "runc list: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() || text.trim() == "null" {
            return Ok(Vec::new());
        }
        let entries: Vec<serde_json::Value> = serde_json::from_str(&text)
            .map_err(|e| ExecError::Runtime(format!("runc list: {e}")))?;
        Ok(entries
            .iter()
            .filter_map(|e| e.get("id").and_then(|i| i.as_str()).map(str::to_string))
            .collect())
    }
}
