//! TCP_NODELAY for PostgreSQL connections, which sqlx 0.9.0 no longer sets.
//!
//! sqlx 0.9.0 opens its sockets without TCP_NODELAY (a regression, fixed upstream after 0.9.0:
//! launchbadge/sqlx issue 4335). Nagle's algorithm then holds back the tail of any message larger
//! than one TCP segment until the server acknowledges the rest, and the server's TCP stack delays
//! that acknowledgement by up to 40 ms. Every batch of new tasks is such a message, so on PostgreSQL
//! each waited 40 ms (in the bench's (b), submit p50 55 ms over TCP against 9 ms over the Unix
//! socket).
//!
//! Until a fixed sqlx is released, each new connection's socket is found among the process's open
//! descriptors by its peer address and given TCP_NODELAY here (Linux). Delete this module once
//! `cargo update -p sqlx-core` brings a release past 0.9.0.

use std::net::SocketAddr;

/// The TCP server a PostgreSQL URL names, or `None` for a Unix socket (`?host=/path`) or another
/// database.
pub fn tcp_server(url: &str) -> Option<(String, u16)> {
    let url = url::Url::parse(url).ok()?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return None;
    }
    if url.query_pairs().any(|(key, _)| key == "host") {
        return None;
    }
    let host = url.host_str().filter(|h| !h.is_empty())?;
    Some((
        host.trim_matches(&['[', ']'][..]).to_owned(),
        url.port().unwrap_or(5432),
    ))
}

/// Sets TCP_NODELAY on every socket of this process connected to `host:port`. Failures are ignored:
/// the connection still works, only slower.
pub async fn set_on_sockets_to(host: &str, port: u16) {
    let Ok(peers) = tokio::net::lookup_host((host, port)).await else {
        return;
    };
    let peers: Vec<SocketAddr> = peers.collect();
    set_on_sockets(&peers);
}

#[cfg(target_os = "linux")]
fn set_on_sockets(peers: &[SocketAddr]) {
    use std::os::fd::{BorrowedFd, RawFd};

    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        // SAFETY: the descriptor is only borrowed for the two calls below, which neither close nor
        // take it. If another thread closes it meanwhile they fail (EBADF); if the number is reused,
        // they reach the new descriptor, which is changed only if it too is a socket connected to the
        // database server, where TCP_NODELAY is wanted anyway.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let connected_to_server = socket
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| peers.contains(&a));
        if connected_to_server {
            if let Err(e) = socket.set_tcp_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY on a database socket");
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn set_on_sockets(_peers: &[SocketAddr]) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_server_reads_host_and_port_and_skips_unix_sockets() {
        assert_eq!(
            tcp_server("postgres://u:p@db.example:6543/comfyd"),
            Some(("db.example".into(), 6543))
        );
        assert_eq!(
            tcp_server("postgresql://u@127.0.0.1/comfyd"),
            Some(("127.0.0.1".into(), 5432))
        );
        assert_eq!(
            tcp_server("postgres://u@[::1]:5433/comfyd"),
            Some(("::1".into(), 5433))
        );
        assert_eq!(
            tcp_server("postgres://u@localhost/db?host=/var/run/postgresql"),
            None
        );
        assert_eq!(tcp_server("sqlite://data/comfyd.db?mode=rwc"), None);
    }

    #[tokio::test]
    async fn sets_nodelay_on_sockets_to_the_server_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let other = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let to_server = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let elsewhere = tokio::net::TcpStream::connect(other.local_addr().expect("addr"))
            .await
            .expect("connect");
        assert!(!to_server.nodelay().expect("nodelay"));

        set_on_sockets_to("127.0.0.1", addr.port()).await;

        assert!(to_server.nodelay().expect("nodelay"), "the server's socket");
        assert!(
            !elsewhere.nodelay().expect("nodelay"),
            "another socket is left alone"
        );
    }
}
