//! Wires one node's data plane: stats file, command ring, worker sockets and threads, the
//! slow path, and signal handling.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use switchyard_shared::command::Event;
use switchyard_shared::config::{Config, EngineKind};
use switchyard_shared::journal::Journal;
use switchyard_shared::ring;
use switchyard_shared::stats::Stats;

use crate::dtls::DtlsConfig;
use crate::engine::Limits;
use crate::handshakes::Handshakes;
use crate::io::IoConfig;
use crate::slowpath::SlowPath;
use crate::worker::{self, Mailbox, WorkerSetup};

/// Cross-worker messages queued per worker. At 1 packet per message, this absorbs a
/// keyframe burst of a few hundred packets from every other worker.
const INBOUND_QUEUE: usize = 16384;

/// Run the data plane until SIGINT/SIGTERM (or until `stop` is set by the caller).
pub fn run_until(config: Config, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    config.validate()?;
    // Before any thread starts: a bad certificate stops the start cleanly.
    let handshakes = Handshakes::new(dtls_config(&config)?);
    let workers = config.media.worker_count();
    let boot = random_u64()?;
    let stats_path = config.stats_path();
    let stats = Arc::new(
        Stats::create(
            &stats_path,
            usize::from(workers),
            config.media.max_sessions_per_worker as usize,
            boot,
        )
        .with_context(|| format!("creating {}", stats_path.display()))?,
    );
    // Static keys must never reuse an SRTP index, across restarts too: their journal
    // outlives this process (docs/crypto.md).
    let journal_path = config.journal_path();
    let capacity = config.media.max_sessions_per_worker as usize * usize::from(workers);
    let (journal, opened) = Journal::open(&journal_path, capacity)
        .with_context(|| format!("opening {}", journal_path.display()))?;
    tracing::info!(journal = %journal_path.display(), opened = match opened {
        switchyard_shared::journal::Opened::Kept => "kept",
        switchyard_shared::journal::Opened::Created => "created",
    }, capacity, "SRTP index journal");
    let journal = Arc::new(journal);
    let ring_path = config.ring_path();
    let side = ring::attach_data(&ring_path, ring::DEFAULT_SLOTS)
        .with_context(|| format!("attaching command ring {}", ring_path.display()))?;

    let cores = core_affinity::get_core_ids().map_or(0, |c| c.len());
    let mailboxes: Arc<[Arc<Mailbox>]> = (0..workers)
        .map(|_| Arc::new(Mailbox::new(INBOUND_QUEUE)))
        .collect();
    let limits = Limits {
        max_sessions: config.media.max_sessions_per_worker as usize,
        nack_cache: usize::from(config.media.nack_cache),
        uplink_nack: config.media.uplink_nack,
        late_join: config.media.late_join,
        pad_video_to: config.media.pad_video_to,
        viewer_bwe: config.media.viewer_bwe,
        ..Limits::default()
    };
    let io = IoConfig {
        recv_buffer: config.media.recv_buffer,
        send_buffer: config.media.send_buffer,
        rx_batch: 32,
        tx_slots: 16384,
        uring_sendmmsg: config.media.uring_sendmmsg,
        gso: config.media.gso.on(),
        relay_gro: config.media.gro.on(),
    };

    let mut threads = Vec::new();
    let mut ready = Vec::new();
    for i in 0..workers {
        let addr = SocketAddr::new(config.media.bind, config.media.port + i);
        let socket = bind_media(addr).with_context(|| format!("binding media socket {addr}"))?;
        let relay_addr = SocketAddr::new(config.media.bind, config.media.relay_port + i);
        let relay =
            bind_media(relay_addr).with_context(|| format!("binding relay socket {relay_addr}"))?;
        let tcp = if config.media.ice_tcp {
            let l = listen_tcp(addr).with_context(|| format!("binding ICE-TCP listener {addr}"))?;
            Some((l, crate::io::TcpLimits::default()))
        } else {
            None
        };
        let core = (config.media.pin && cores > 0)
            .then(|| (usize::from(config.media.first_core) + usize::from(i)) % cores);
        let setup = WorkerSetup {
            index: i,
            socket,
            relay: Some(relay),
            tcp,
            engine: config.media.engine,
            io: io.clone(),
            core,
            limits,
            stats: stats.clone(),
            journal: Some(journal.clone()),
            mailboxes: mailboxes.clone(),
            stop: stop.clone(),
            seed: boot ^ (u64::from(i) << 48) ^ 0x9e37_79b9_7f4a_7c15,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        ready.push(rx);
        threads.push(
            std::thread::Builder::new()
                .name(format!("swy-worker-{i}"))
                .spawn(move || worker::run(setup, tx))
                .context("spawning worker thread")?,
        );
    }
    let mut engine = EngineKind::Auto;
    let mut failure = None;
    for (i, rx) in ready.into_iter().enumerate() {
        match rx.recv() {
            Ok(Ok(kind)) => {
                tracing::info!(worker = i, engine = %kind, port = config.media.port + i as u16, core = core_of(&config, i, cores).map(|c| c as u64), "worker started");
                engine = kind;
            }
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(format!("worker {i} exited before starting")),
        }
    }
    if let Some(e) = failure {
        stop.store(true, Ordering::SeqCst);
        for m in mailboxes.iter() {
            m.wake_now();
        }
        for t in threads {
            let _ = t.join();
        }
        bail!("data plane failed to start: {e}");
    }

    let fingerprint = handshakes.fingerprint();
    let mut slow = SlowPath::new(
        side,
        ring_path.clone(),
        mailboxes.clone(),
        handshakes,
        stats.clone(),
    );
    slow.announce(Event::Hello {
        fingerprint,
        boot,
        pid: std::process::id(),
        workers,
        media_port: config.media.port,
        relay_port: config.media.relay_port,
        engine,
    });
    tracing::info!(
        workers,
        engine = %engine,
        ring = %ring_path.display(),
        "data plane up"
    );
    slow.run(&stop);

    tracing::info!("data plane stopping");
    for m in mailboxes.iter() {
        m.wake_now();
    }
    for t in threads {
        let _ = t.join();
    }
    // A clean stop leaves no shared memory behind (the ring alone is 4 MiB of /dev/shm): a
    // control plane still attached sees the ring gone, detaches, and attaches to the one the
    // next data plane creates, sending it its sessions again. The SRTP index journal stays:
    // it is what keeps a static key from reusing an index after this restart
    // (docs/crypto.md). A crash skips this, and the next start reuses the files.
    drop(slow);
    for path in [&ring_path, &stats_path] {
        match std::fs::remove_file(path) {
            Ok(()) => tracing::info!(file = %path.display(), "removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot remove"),
        }
    }
    Ok(())
}

fn core_of(config: &Config, i: usize, cores: usize) -> Option<usize> {
    (config.media.pin && cores > 0).then(|| (usize::from(config.media.first_core) + i) % cores)
}

/// Run until SIGINT or SIGTERM.
/// A worker's UDP socket (media or relay). Bound to the IPv6 wildcard it is explicitly dual-stack
/// (IPV6_V6ONLY off), so IPv4 and IPv6 peers reach the same worker port whatever
/// `net.ipv6.bindv6only` says; the I/O engines report IPv4 peers as plain IPv4.
fn bind_media(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    if let SocketAddr::V6(v6) = addr {
        if v6.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A worker's ICE-TCP listener, on the same address and port number as its media socket
/// (dual-stack like it). SO_REUSEADDR so a restarted data plane binds again while the old
/// connections sit in TIME_WAIT.
fn listen_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if let SocketAddr::V6(v6) = addr {
        if v6.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Our DTLS identity: the configured certificate, or a fresh self-signed one.
fn dtls_config(config: &Config) -> anyhow::Result<DtlsConfig> {
    match (&config.webrtc.certificate, &config.webrtc.private_key) {
        (Some(cert), Some(key)) => {
            let read = |p: &std::path::Path| {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
            };
            DtlsConfig::from_pem(&read(cert)?, &read(key)?)
                .with_context(|| format!("loading the DTLS certificate {}", cert.display()))
        }
        _ => DtlsConfig::generate().context("generating the DTLS certificate"),
    }
}

pub fn run(config: Config) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handler")?;
    }
    run_until(config, stop)
}

fn random_u64() -> anyhow::Result<u64> {
    use ::ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ::ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("system random source failed"))?;
    Ok(u64::from_le_bytes(b))
}
