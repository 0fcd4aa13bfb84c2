//! Real TCP and UDP traffic between namespaces, from threads that enter a
//! namespace: a socket stays in the namespace it was created in.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use tracer::netns::Netns;

/// Runs `f` on a new thread inside netns `name` and returns its result.
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = Netns::open(name).expect("open netns");
    std::thread::spawn(move || ns.run(f).expect("enter netns"))
        .join()
        .expect("thread")
}

/// A TCP echo exchange: listener in `server_ns` on `addr`, one connection
/// from `client_ns` sending `msg`; returns what came back.
pub fn tcp_echo(server_ns: &str, client_ns: &str, addr: SocketAddr, msg: &'static [u8]) -> Vec<u8> {
    let listener = in_netns(server_ns, move || TcpListener::bind(addr).expect("bind"));
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0; msg.len()];
        s.read_exact(&mut buf).expect("read");
        s.write_all(&buf).expect("echo");
    });
    let mut client = in_netns(client_ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect")
    });
    client.write_all(msg).expect("send");
    let mut back = vec![0; msg.len()];
    client.read_exact(&mut back).expect("read back");
    server.join().expect("server");
    back
}

/// Sends `count` UDP datagrams of `payload` from `client_ns` to `addr`
/// (where a socket in `server_ns` is bound, so no ICMP unreachable comes
/// back); returns how many the server got within a second.
pub fn udp_send(
    server_ns: &str,
    client_ns: &str,
    addr: SocketAddr,
    payload: &'static [u8],
    count: usize,
) -> usize {
    let server = in_netns(server_ns, move || UdpSocket::bind(addr).expect("bind udp"));
    server
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .expect("timeout");
    let client = in_netns(client_ns, || {
        UdpSocket::bind("0.0.0.0:0").expect("bind client")
    });
    for _ in 0..count {
        client.send_to(payload, addr).expect("send");
    }
    let mut got = 0;
    let mut buf = [0u8; 2048];
    while got < count && server.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    got
}

/// Request/response traffic: `conns` TCP connections from `client_ns` to
/// an echo server in `server_ns` on `addr`, each sending 64 bytes and
/// waiting for them to come back, one at a time, for `secs`; returns the
/// exchanges completed. Many threads that sleep and wake in turn: the load
/// under which a reader in another session could not get the CPU.
pub fn request_response(
    server_ns: &str,
    client_ns: &str,
    addr: SocketAddr,
    conns: usize,
    secs: Duration,
) -> u64 {
    let listener = in_netns(server_ns, move || TcpListener::bind(addr).expect("bind"));
    let server = std::thread::spawn(move || {
        let mut echoes = Vec::new();
        for _ in 0..conns {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_nodelay(true).expect("nodelay");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            echoes.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while s.read_exact(&mut buf).is_ok() {
                    if s.write_all(&buf).is_err() {
                        break;
                    }
                }
            }));
        }
        for e in echoes {
            let _ = e.join();
        }
    });
    let clients: Vec<_> = (0..conns)
        .map(|_| {
            let mut c = in_netns(client_ns, move || {
                TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect")
            });
            std::thread::spawn(move || {
                c.set_nodelay(true).expect("nodelay");
                // A wedged exchange fails the test rather than hang it.
                c.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let until = std::time::Instant::now() + secs;
                let mut buf = [7u8; 64];
                let mut done = 0;
                while std::time::Instant::now() < until {
                    c.write_all(&buf).expect("request");
                    c.read_exact(&mut buf).expect("response");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let done = clients.into_iter().map(|c| c.join().expect("client")).sum();
    server.join().expect("server");
    done
}
