//! The load generator's thread: the simulator (or the webhook sender) on its own OS thread and
//! single-threaded runtime, so its CPU time can be told apart from the bridge's.

use std::time::Duration;

use anyhow::{anyhow, bail};

use fondo_bridge::simulator::stream::{SimHandle, StreamConfig};

pub struct SimThread {
    pub handle: SimHandle,
    /// The thread's runtime: the webhook sender is spawned on it.
    pub rt: tokio::runtime::Handle,
    /// The thread's id, for its `/proc/self/task/<tid>/stat`.
    pub tid: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<std::thread::JoinHandle<()>>,
}

type SimReady = anyhow::Result<(SimHandle, tokio::runtime::Handle, Option<String>)>;

impl SimThread {
    /// The simulated stream's handshake request for the bench's client id, with its Bearer token.
    pub fn client_request(
        &self,
    ) -> anyhow::Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let url = format!(
            "{}/v2/partner/client/{}/subscribe",
            self.handle.base_url(),
            crate::payload::CLIENT_ID
        );
        let mut req = url.into_client_request()?;
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", crate::payload::TOKEN).parse()?,
        );
        Ok(req)
    }

    /// Waits (up to 30 s) until the simulator sent its first event: runs are timed from there.
    pub async fn first_event_sent(&self) -> anyhow::Result<()> {
        let wait_start = std::time::Instant::now();
        while self.handle.events_sent() == 0 {
            if wait_start.elapsed() > Duration::from_secs(30) {
                bail!("the simulator sent nothing in 30 s");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        Ok(())
    }

    /// Starts the simulator with `cfg` (`None`: one that sends no events, for its runtime alone)
    /// and moves the thread to `load_cpus` (a `taskset` list) when given.
    pub fn spawn(cfg: Option<StreamConfig>, load_cpus: Option<&str>) -> anyhow::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<SimReady>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let join = std::thread::Builder::new()
            .name("bench-sim".into())
            .spawn(move || serve(cfg, &tx, stop_rx))?;
        let (handle, rt, tid) = rx.recv().map_err(|_| anyhow!("simulator thread died"))??;
        if let (Some(cpus), Some(tid)) = (load_cpus, tid.as_deref()) {
            // The load generator off the bridge's CPU, as a separate client would be.
            let ok = std::process::Command::new("taskset")
                .args(["-pc", cpus, tid])
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                bail!("cannot pin the simulator thread {tid} to CPUs {cpus} with taskset");
            }
        }
        Ok(Self {
            handle,
            rt,
            tid,
            stop: Some(stop_tx),
            join: Some(join),
        })
    }

    pub async fn stop(mut self) {
        let h = self.handle;
        // The listener task runs on the simulator's runtime, still driven by its thread.
        let _ = tokio::time::timeout(Duration::from_secs(5), h.stop()).await;
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(j) = self.join.take() {
            let _ = tokio::task::spawn_blocking(move || j.join()).await;
        }
    }
}

/// The thread's body: its runtime runs the simulator until `stop` fires.
fn serve(
    cfg: Option<StreamConfig>,
    ready: &std::sync::mpsc::Sender<SimReady>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    let tid = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()));
    rt.block_on(async move {
        let cfg = cfg.unwrap_or_else(|| StreamConfig {
            count: Some(0),
            ..StreamConfig::default()
        });
        match fondo_bridge::simulator::stream::start(cfg).await {
            Ok((_, h)) => {
                let _ = ready.send(Ok((h, tokio::runtime::Handle::current(), tid)));
            }
            Err(e) => {
                let _ = ready.send(Err(anyhow!("simulator: {e}")));
                return;
            }
        }
        let _ = stop.await;
    });
}
