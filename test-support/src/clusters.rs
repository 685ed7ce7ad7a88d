//! PostgreSQL servers of a test's own: a primary and a synchronous streaming standby on their
//! own loopback ports under a temporary directory (`initdb`, `pg_basebackup`), which the test
//! may kill, promote and rebuild. Each is stopped (immediately) when dropped, and the
//! directory removed with its `TempDir`.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the programs run as the
//! `postgres` user (`runuser`), and the directory is given to that user.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

/// The standby's name, which the primary waits for on every commit.
pub const STANDBY_NAME: &str = "grid_standby";

/// The directory of PostgreSQL's server programs (`initdb`, `pg_ctl`, ...), newest version.
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("these tests create PostgreSQL clusters: /usr/lib/postgresql is missing")
        .map(|entry| entry.unwrap().path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("no initdb under /usr/lib/postgresql")
}

/// A command run as the `postgres` user when the test runs as root.
fn as_postgres(program: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One PostgreSQL server of the test.
pub struct Cluster {
    pub data: PathBuf,
    pub port: u16,
    bin: PathBuf,
}

impl Cluster {
    fn pg_ctl(&self) -> Command {
        let mut command = as_postgres(&self.bin.join("pg_ctl"));
        command.arg("-D").arg(&self.data);
        command
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn start(&self) {
        run(self
            .pg_ctl()
            .arg("-l")
            .arg(self.data.with_extension("log"))
            .args(["-w", "start"]));
    }

    /// SIGKILL to the postmaster (the machine's database is gone, no shutdown checkpoint),
    /// and wait until it is gone. Its backends exit on their own once they notice; its port
    /// is free at once (only the postmaster listens).
    pub fn kill_postmaster(&self) {
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().trim().to_owned();
        run(Command::new("kill").args(["-KILL", &pid]));
        let deadline = Instant::now() + Duration::from_secs(20);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Promote this standby to primary (waits until it accepts writes).
    pub fn promote(&self) {
        run(self.pg_ctl().args(["-w", "promote"]));
    }

    fn append_config(&self, lines: &str) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .unwrap();
        file.write_all(lines.as_bytes()).unwrap();
    }

    /// Make this (promoted) primary wait for a synchronous standby again, or not.
    pub async fn require_standby(&self, required: bool) {
        let mut connection = sqlx::PgConnection::connect(&self.url()).await.unwrap();
        let names = if required { STANDBY_NAME } else { "" };
        sqlx::query(&format!(
            "ALTER SYSTEM SET synchronous_standby_names = '{names}'"
        ))
        .execute(&mut connection)
        .await
        .unwrap();
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&mut connection)
            .await
            .unwrap();
    }

    /// Wait until this primary reports its standby streaming synchronously.
    pub async fn wait_synchronous(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut connection) = sqlx::PgConnection::connect(&self.url()).await {
                let state: Option<String> = sqlx::query_scalar(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1",
                )
                .bind(STANDBY_NAME)
                .fetch_optional(&mut connection)
                .await
                .unwrap_or(None);
                if state.as_deref() == Some("sync") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the standby never became synchronous"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .pg_ctl()
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A new primary under `root` (owned by the `postgres` user) that waits on every commit for
/// a synchronous standby named [`STANDBY_NAME`].
pub fn primary(root: &Path) -> Cluster {
    let bin = postgres_bin();
    run(Command::new("chown").args(["postgres:postgres"]).arg(root));
    let primary = Cluster {
        data: root.join("primary"),
        port: free_port(),
        bin: bin.clone(),
    };
    run(as_postgres(&bin.join("initdb"))
        .arg("-D")
        .arg(&primary.data)
        .args(["-U", "postgres", "--auth=trust", "--no-sync"]));
    primary.append_config(&format!(
        "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
         fsync = off\nsynchronous_commit = on\nsynchronous_standby_names = '{STANDBY_NAME}'\n",
        primary.port,
        root.display()
    ));
    primary.start();
    primary
}

/// A streaming standby of `primary` in `data` on `port` (`pg_basebackup -R`), started. Once
/// promoted it waits for no standby of its own until told to ([`Cluster::require_standby`]).
pub fn standby_of(primary: &Cluster, data: PathBuf, port: u16) -> Cluster {
    let standby = Cluster {
        data,
        port,
        bin: primary.bin.clone(),
    };
    let _ = std::fs::remove_dir_all(&standby.data);
    let _ = std::fs::remove_file(standby.data.with_extension("log"));
    run(as_postgres(&standby.bin.join("pg_basebackup"))
        .arg("-d")
        .arg(format!(
            "host=127.0.0.1 port={} user=postgres application_name={STANDBY_NAME}",
            primary.port
        ))
        .arg("-D")
        .arg(&standby.data)
        // An immediate checkpoint: a spread one paces the dirty buffers over minutes.
        .args(["-R", "--checkpoint=fast"]));
    standby.append_config(&format!(
        "\nport = {}\nsynchronous_standby_names = ''\n",
        standby.port
    ));
    // A promoted primary's ALTER SYSTEM travels in postgresql.auto.conf; the standby's own
    // setting above must win until it is promoted and told otherwise.
    let auto = standby.data.join("postgresql.auto.conf");
    if let Ok(text) = std::fs::read_to_string(&auto) {
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| !line.starts_with("synchronous_standby_names"))
            .collect();
        std::fs::write(&auto, kept.join("\n") + "\n").unwrap();
    }
    standby.start();
    standby
}

/// A primary and its synchronous standby under `root`, the standby streaming.
pub async fn primary_and_standby(root: &Path) -> (Cluster, Cluster) {
    let root_owned = root.to_owned();
    let (primary, standby) = tokio::task::spawn_blocking(move || {
        let primary = primary(&root_owned);
        let standby = standby_of(&primary, root_owned.join("standby"), free_port());
        (primary, standby)
    })
    .await
    .unwrap();
    primary.wait_synchronous().await;
    (primary, standby)
}
