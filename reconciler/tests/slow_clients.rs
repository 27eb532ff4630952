//! Slow and idle clients against `sdp serve` on a real socket: a connection that never finishes its request head
//! is closed after the header timeout, connections beyond the cap wait instead of taking descriptors, and the
//! server stops when asked even with connections open.

use std::time::Duration;

use sdp_reconciler::serve::{ServeConfig, serve_on};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Long enough for any answer on a loaded machine; the tests never wait this long when SDP is right.
const DEADLINE: Duration = Duration::from_secs(30);

struct Server {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn server(max_connections: usize, header_timeout_secs: u64) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("config");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q", "-b", "main"]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "empty",
    ]);
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token-0123456789abcdef").unwrap();
    let config = ServeConfig {
        allow_anonymous: true,
        max_connections,
        header_timeout_secs,
        ..ServeConfig::new(repo.display().to_string(), dir.path().join("data"), token)
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(serve_on(listener, config, async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
        done,
        _dir: dir,
    }
}

/// Reads until the server closes the connection (or resets it); how long that took is not asserted, only that it
/// happened before the deadline.
async fn closed_by_server(mut stream: TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(DEADLINE, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept a slow connection open for {DEADLINE:?}");
    got
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: sdp\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    String::from_utf8_lossy(&closed_by_server(stream).await).into_owned()
}

#[tokio::test]
async fn unfinished_and_idle_connections_are_closed_and_others_are_served_meanwhile() {
    let server = server(256, 1).await;
    let mut slow = Vec::new();
    for i in 0..40 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        if i % 2 == 0 {
            // Half a request head, as a slowloris client sends it.
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: sdp\r\nX-Slow: ")
                .await
                .unwrap();
        }
        slow.push(stream);
    }
    // Served while the slow ones hold their connections.
    let answer = get(server.addr, "/metrics").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A kept-alive connection that goes quiet after one answer is closed too.
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    kept.write_all(b"GET /metrics HTTP/1.1\r\nHost: sdp\r\n\r\n")
        .await
        .unwrap();
    slow.push(kept);

    for stream in slow {
        let got = closed_by_server(stream).await;
        // Nothing but, at most, one answer (the kept-alive one's) or a timeout answer.
        let text = String::from_utf8_lossy(&got);
        assert!(got.is_empty() || text.starts_with("HTTP/1.1 "), "{text}");
    }
    let answer = get(server.addr, "/metrics").await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "still serving after the slow clients: {answer}"
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_one() {
    let server = server(4, 3).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // The fifth is accepted by the kernel but not served while four connections are open.
    let mut fifth = TcpStream::connect(server.addr).await.unwrap();
    fifth
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: sdp\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(1500), fifth.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a fifth connection was served beyond a cap of four: {early:?}"
    );
    // Once the idle ones time out, it is served.
    let answer = String::from_utf8_lossy(&closed_by_server(fifth).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(idle);
}

#[tokio::test]
async fn a_stop_ends_the_server_with_connections_still_open() {
    let mut server = server(16, 3600).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: sdp\r\n")
            .await
            .unwrap();
        open.push(stream);
    }
    // Make sure the server has taken them before the stop.
    let answer = get(server.addr, "/metrics").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.stop.take().unwrap().send(()).unwrap();
    let result = tokio::time::timeout(DEADLINE, &mut server.done).await;
    assert!(
        result.is_ok(),
        "the server did not stop within {DEADLINE:?} with three connections open"
    );
    result.unwrap().unwrap().unwrap();
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "still listening after the stop"
    );
}
