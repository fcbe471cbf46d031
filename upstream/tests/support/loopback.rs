//! Listeners on several loopback addresses sharing one port, as tasks in a VPC share a port on
//! different addresses. One copy for the upstream crate's tests and hello's.

use std::net::{Ipv4Addr, TcpListener};

/// Non-blocking listeners on 127.0.0.11, 127.0.0.12, ..., all on one port, ready for tokio.
pub fn same_port(count: u8) -> Vec<TcpListener> {
    'ports: for _ in 0..20 {
        let first = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 11), 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for i in 1..count {
            match TcpListener::bind((Ipv4Addr::new(127, 0, 0, 11 + i), port)) {
                Ok(listener) => listeners.push(listener),
                Err(_) => continue 'ports,
            }
        }
        for listener in &listeners {
            listener.set_nonblocking(true).unwrap();
        }
        return listeners;
    }
    panic!("no port free on every loopback address");
}
