//! Starting a server from [`ServeSettings`]: load the local models, connect the remote ones, bind
//! (loopback unless allowed otherwise), serve until Ctrl-C.

use std::sync::Arc;

use bakeoff_engine::backend::DeviceKind;
use bakeoff_engine::loader::{LoadOptions, load};

use crate::backend::Upstream;
use crate::config::ServeSettings;
use crate::engine::LocalModel;
use crate::metrics::Metrics;
use crate::remote::RemoteModel;
use crate::router::{Replica, Router};
use crate::routes::{AppState, app};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error("cannot load model `{source_arg}`: {error}")]
    Load {
        source_arg: String,
        #[source]
        error: bakeoff_engine::Error,
    },
    #[error("{0}")]
    Start(String),
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: String,
        #[source]
        error: std::io::Error,
    },
}

/// Loads every replica and builds the router (blocking: loading reads weights from disk).
pub fn build_state(
    settings: &ServeSettings,
    metrics: Arc<Metrics>,
) -> Result<AppState, ServeError> {
    let device: DeviceKind = settings
        .device
        .parse()
        .map_err(|e: bakeoff_engine::Error| ServeError::Config(e.to_string()))?;
    let mut replicas = Vec::new();
    for m in &settings.models {
        let tier = m.tier().map_err(ServeError::Config)?;
        let id = m.id();
        let backend: Arc<dyn Upstream> = match (&m.source, &m.url) {
            (Some(src), _) => {
                let opts = LoadOptions {
                    device,
                    threads: settings.threads,
                    dtype: None,
                    max_context: settings.max_context,
                    progress: true,
                    cpu_kernels: None,
                    weight_cache: bakeoff_engine::loader::default_weight_cache()
                        .map_err(|e| ServeError::Config(e.to_string()))?,
                    kv_cache: settings.kv_cache,
                    // The engine replaces the scheduler with its own (`engine.prefill_chunk`).
                    prefill_chunk: bakeoff_engine::generate::DEFAULT_PREFILL_CHUNK,
                    // Written while the server waits for its first request.
                    background_cache_write: true,
                };
                eprintln!("loading `{id}` ({}) from {src} ...", tier.as_str());
                let lm =
                    load(src, m.gguf_file.as_deref(), &opts).map_err(|error| ServeError::Load {
                        source_arg: src.clone(),
                        error,
                    })?;
                eprintln!(
                    "  {} {} · {} · context {} · {:.1} s",
                    format!("{:?}", lm.info.arch).to_lowercase(),
                    lm.info.weight_dtype,
                    lm.info.device,
                    lm.model.config().max_context,
                    lm.info.load_s
                );
                Arc::new(
                    LocalModel::spawn(&id, lm, settings.engine.clone(), metrics.clone())
                        .map_err(|e| ServeError::Start(e.message))?,
                )
            }
            (None, Some(url)) => {
                let key = match &m.api_key_env {
                    Some(var) => Some(std::env::var(var).map_err(|_| {
                        ServeError::Config(format!("model `{id}`: api_key_env `{var}` is not set"))
                    })?),
                    None => None,
                };
                let r = RemoteModel::new(
                    Some(id.clone()),
                    url,
                    m.upstream_model.clone(),
                    key,
                    m.context_length,
                    settings
                        .router
                        .health_timeout
                        .max(std::time::Duration::from_secs(2)),
                )
                .map_err(|e| ServeError::Config(e.message))?;
                eprintln!("remote `{id}` ({}) at {}", tier.as_str(), r.base_url());
                Arc::new(r)
            }
            (None, None) => {
                return Err(ServeError::Config(format!(
                    "model `{id}` has neither source nor url"
                )));
            }
        };
        replicas.push(Replica::new(tier, backend));
    }
    let router = Router::new(replicas, settings.router.clone(), metrics.clone())
        .map_err(|e| ServeError::Config(e.message))?;
    Ok(AppState::new(
        Arc::new(router),
        metrics,
        settings.http.clone(),
    ))
}

/// How the server stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Every answer in flight finished within the grace period.
    Drained,
    /// The grace period ended with connections still open; they were cut.
    GraceExpired,
    /// A second Ctrl-C (or SIGTERM) during the grace period: stopped at once. The CLI exits 130.
    Forced,
}

/// Runs the server until Ctrl-C (or SIGTERM). Prints `listening on http://ADDR` to stderr once
/// the socket is bound, so scripts that pass `--port 0` can find the port.
pub fn run_blocking(settings: ServeSettings) -> Result<Stopped, ServeError> {
    settings.check_bind().map_err(ServeError::Config)?;
    if settings.http.api_key.is_none() && settings.allow_non_loopback {
        eprintln!(
            "warning: listening beyond loopback without an API key: anyone who can reach it can use it"
        );
    }
    let metrics = Arc::new(Metrics::new());
    let state = build_state(&settings, metrics)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("serve-io")
        // The HTTP side only shuffles bytes; the engines have their own threads.
        .worker_threads(2)
        .build()
        .map_err(|e| ServeError::Start(format!("cannot start the async runtime: {e}")))?;
    let stopped = rt.block_on(async move {
        let addr = format!("{}:{}", settings.host, settings.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|error| ServeError::Bind {
                addr: addr.clone(),
                error,
            })?;
        let local = listener.local_addr().map_err(|error| ServeError::Bind {
            addr: addr.clone(),
            error,
        })?;
        state.router.spawn_health_checks();
        eprintln!(
            "listening on http://{local} (policy {}, {} replica(s){})",
            settings.router.policy.as_str(),
            state.router.replicas().len(),
            if settings.http.api_key.is_some() {
                ", API key required"
            } else {
                ""
            }
        );
        Ok::<_, ServeError>(serve_until_signal(listener, state, &settings).await)
    })?;
    // Streams cut at the end of the grace period may still hold engine threads busy for a
    // step; the runtime is not waited for.
    rt.shutdown_background();
    Ok(stopped)
}

/// The accept loop: a header-read timeout (which also closes idle kept-alive connections), a
/// cap on open connections, and on the first signal a drain bounded by the grace period.
async fn serve_until_signal(
    listener: tokio::net::TcpListener,
    state: AppState,
    settings: &ServeSettings,
) -> Stopped {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let metrics = state.metrics.clone();
    let service = TowerToHyperService::new(app(state));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(settings.header_timeout));
    let slots = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        eprintln!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    metrics.inc("bakeoff_connections_refused_total", &[]);
                    tokio::spawn(refuse(stream));
                    continue;
                };
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service.clone())
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(slot);
                });
            }
            () = &mut signal => break,
        }
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        eprintln!(
            "waiting up to {:.0} s for {open} open connection(s); Ctrl-C again to stop now",
            settings.shutdown_grace.as_secs_f64()
        );
    }
    tokio::select! {
        () = graceful.shutdown() => Stopped::Drained,
        () = tokio::time::sleep(settings.shutdown_grace) => {
            eprintln!("grace period over: closing the remaining connections");
            Stopped::GraceExpired
        }
        () = shutdown_signal() => {
            eprintln!("stopping now");
            Stopped::Forced
        }
    }
}

/// Past the connection cap: a short 503 and close, written with a deadline so a client that
/// does not read cannot hold the task.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"error":{"message":"too many open connections; retry shortly","type":"server_error","param":null,"code":"too_many_connections"}}"#;
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        stream.write_all(reply.as_bytes()),
    )
    .await;
    let _ = stream.shutdown().await;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down");
}
