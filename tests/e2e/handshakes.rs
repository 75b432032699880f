//! One address gets a share of a listener's TLS handshake slots: clients
//! that open connections from one address and never finish TLS cannot hold
//! every slot while others (the relay, the Registry client, settings) connect.

use cpis_proto::registry::v1::ListPlansRequest;
use cpis_testkit::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_from_one_address_leave_slots_for_everyone_else() {
    let ts = TestSuite::start().await;
    let registry = std::net::SocketAddr::from(([127, 0, 0, 1], ts.registry_port()));
    let mut kent = ts.registry(&council(KENT));
    kent.list_plans(ListPlansRequest::default()).await.expect("served");
    // As many connections as the listener has handshake slots (256 by
    // default), all from 127.0.0.2, none of which ever says a word.
    let mut stalled = Vec::new();
    for _ in 0..256 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).expect("binding 127.0.0.2");
        stalled.push(socket.connect(registry).await.expect("a TCP connection"));
    }
    // Give the listener time to take them all in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A new caller from 127.0.0.1 is served at once, not after the stalled
    // handshakes time out (10 s).
    let started = Instant::now();
    let mut manchester = ts.registry(&council(MANCHESTER));
    manchester.list_plans(ListPlansRequest::default()).await.expect("a new caller from another address is served");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    drop(stalled);
    ts.suite.stop().await.unwrap();
}
