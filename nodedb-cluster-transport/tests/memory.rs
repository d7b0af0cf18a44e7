//! The in-memory transport: round trips, seeded fault determinism, partitions, one-way cuts,
//! crash/restart and bounded streams. Time is paused, so delays and deadlines cost nothing.

mod common;

use common::{EchoHandler, pattern_chunk};
use nodedb_cluster_core::NodeId;
use nodedb_cluster_transport::{
    Bytes, FaultPlan, HandlerError, MemoryNetwork, MemoryTransport, Transport, TransportError,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(1);

fn node(id: u64) -> NodeId {
    NodeId(id)
}

fn start(network: &MemoryNetwork, id: u64) -> (Arc<MemoryTransport>, Arc<EchoHandler>) {
    let transport = network.register(node(id)).expect("register");
    let handler = Arc::new(EchoHandler::new());
    transport.set_handler(handler.clone());
    (transport, handler)
}

#[tokio::test(start_paused = true)]
async fn round_trip_carries_sender_and_handler_errors() {
    let network = MemoryNetwork::new(1);
    let (a, _) = start(&network, 1);
    let (_b, b_handler) = start(&network, 2);

    let response = a.call(node(2), Bytes::from_static(b"hi"), TIMEOUT).await;
    assert_eq!(response, Ok(Bytes::from_static(b"echo:hi")));
    assert_eq!(*b_handler.senders.lock().unwrap(), vec![node(1)]);

    let failed = a.call(node(2), Bytes::from_static(b"fail"), TIMEOUT).await;
    assert!(matches!(
        failed,
        Err(TransportError::Remote { node: n, error: HandlerError::BadRequest(_) }) if n == node(2)
    ));

    let stats = network.stats();
    assert_eq!(
        stats.delivered, 4,
        "two requests and two responses: {stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn call_by_address_uses_the_address_book() {
    let network = MemoryNetwork::new(1);
    let (a, _) = start(&network, 1);
    let (_b, _) = start(&network, 2);
    let addr: std::net::SocketAddr = "10.0.0.2:9400".parse().unwrap();
    let unknown = a.call_addr(addr, Bytes::from_static(b"x"), TIMEOUT).await;
    assert!(matches!(
        unknown,
        Err(TransportError::UnreachableAddr { .. })
    ));
    network.set_addr(node(2), addr);
    let answer = a.call_addr(addr, Bytes::from_static(b"x"), TIMEOUT).await;
    assert_eq!(answer, Ok((node(2), Bytes::from_static(b"echo:x"))));
}

#[tokio::test(start_paused = true)]
async fn missing_handler_answers_not_ready() {
    let network = MemoryNetwork::new(1);
    let (a, _) = start(&network, 1);
    let _b = network.register(node(2)).unwrap();
    let result = a.call(node(2), Bytes::from_static(b"x"), TIMEOUT).await;
    assert!(matches!(
        result,
        Err(TransportError::Remote {
            error: HandlerError::NotReady,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_fault_decisions() {
    let plan = FaultPlan {
        drop_probability: 0.3,
        duplicate_probability: 0.2,
        delay_ms_min: 1,
        delay_ms_max: 50,
    };
    let decisions = |seed: u64| {
        let network = MemoryNetwork::with_fault_plan(seed, plan.clone());
        (0..200)
            .map(|_| network.next_decision())
            .collect::<Vec<_>>()
    };
    assert_eq!(decisions(7), decisions(7));
    assert_ne!(decisions(7), decisions(8));
    let dropped = decisions(7).iter().filter(|d| d.dropped).count();
    assert!(
        (20..=100).contains(&dropped),
        "{dropped} of 200 dropped at p=0.3"
    );
}

/// A whole run of calls over a lossy network replays identically for one seed.
#[tokio::test(start_paused = true)]
async fn same_seed_same_call_outcomes() {
    async fn run(seed: u64) -> Vec<Result<Bytes, TransportError>> {
        let network = MemoryNetwork::with_fault_plan(seed, FaultPlan::lossy(0.3, 0, 20));
        let (a, _) = start(&network, 1);
        let (_b, _) = start(&network, 2);
        let mut outcomes = Vec::new();
        for i in 0..50u32 {
            let request = Bytes::from(i.to_le_bytes().to_vec());
            outcomes.push(a.call(node(2), request, TIMEOUT).await);
        }
        outcomes
    }
    let first = run(42).await;
    assert_eq!(first, run(42).await);
    assert!(first.iter().any(|outcome| outcome.is_ok()));
    assert!(
        first
            .iter()
            .any(|outcome| matches!(outcome, Err(TransportError::Timeout { .. })))
    );
}

#[tokio::test(start_paused = true)]
async fn random_delays_reorder_messages() {
    let network = MemoryNetwork::with_fault_plan(13, FaultPlan::lossy(0.0, 0, 100));
    let (a, _) = start(&network, 1);
    let (_b, b_handler) = start(&network, 2);
    let calls = (0..20u8).map(|i| {
        let a = Arc::clone(&a);
        async move { a.call(node(2), Bytes::from(vec![b'r', i]), TIMEOUT).await }
    });
    for result in futures::future::join_all(calls).await {
        assert!(result.is_ok());
    }
    assert_eq!(b_handler.request_count(), 20);
    let stats = network.stats();
    assert_eq!((stats.dropped, stats.delivered), (0, 40), "{stats:?}");
    // Arrival order is recorded by the handler through the request bodies it echoes; with
    // delays of 0..=100 ms, twenty messages do not all arrive in send order.
    let arrivals = b_handler.arrivals.lock().unwrap().clone();
    let sent: Vec<u8> = (0..20).collect();
    assert_ne!(arrivals, sent, "no reordering at all");
}

#[tokio::test(start_paused = true)]
async fn dropped_message_times_out_with_outcome_unknown() {
    let network = MemoryNetwork::with_fault_plan(3, FaultPlan::lossy(1.0, 0, 0));
    let (a, _) = start(&network, 1);
    let (_b, b_handler) = start(&network, 2);
    let result = a.call(node(2), Bytes::from_static(b"x"), TIMEOUT).await;
    let error = result.unwrap_err();
    assert_eq!(error, TransportError::Timeout { node: node(2) });
    assert!(error.outcome_unknown());
    assert_eq!(b_handler.request_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn duplicates_reach_the_handler_twice() {
    let plan = FaultPlan {
        duplicate_probability: 1.0,
        ..FaultPlan::none()
    };
    let network = MemoryNetwork::with_fault_plan(3, plan);
    let (a, _) = start(&network, 1);
    let (_b, b_handler) = start(&network, 2);
    a.call(node(2), Bytes::from_static(b"x"), TIMEOUT)
        .await
        .unwrap();
    assert!(common::wait_until(TIMEOUT, || b_handler.request_count() == 2).await);
}

#[tokio::test(start_paused = true)]
async fn partition_refuses_both_ways_until_heal() {
    let network = MemoryNetwork::new(5);
    let (a, _) = start(&network, 1);
    let (b, _) = start(&network, 2);
    let (c, _) = start(&network, 3);

    network.partition(&[node(1)], &[node(2), node(3)]);
    let refused = a.call(node(2), Bytes::from_static(b"x"), TIMEOUT).await;
    assert!(matches!(refused, Err(TransportError::Unreachable { .. })));
    assert!(!refused.unwrap_err().outcome_unknown());
    let refused = b.call(node(1), Bytes::from_static(b"x"), TIMEOUT).await;
    assert!(matches!(refused, Err(TransportError::Unreachable { .. })));
    // The majority side still talks.
    assert!(
        c.call(node(2), Bytes::from_static(b"x"), TIMEOUT)
            .await
            .is_ok()
    );

    network.heal();
    assert!(
        a.call(node(2), Bytes::from_static(b"x"), TIMEOUT)
            .await
            .is_ok()
    );
    assert!(
        b.call(node(1), Bytes::from_static(b"x"), TIMEOUT)
            .await
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn one_way_cut_loses_responses_as_timeouts() {
    let network = MemoryNetwork::new(5);
    let (a, _) = start(&network, 1);
    let (b, b_handler) = start(&network, 2);

    network.cut(node(2), node(1));
    // 1 -> 2 is open: the request is handled, but the response is lost.
    let result = a.call(node(2), Bytes::from_static(b"x"), TIMEOUT).await;
    assert_eq!(result, Err(TransportError::Timeout { node: node(2) }));
    assert_eq!(b_handler.request_count(), 1);
    // 2 -> 1 is refused at once.
    let result = b.call(node(1), Bytes::from_static(b"x"), TIMEOUT).await;
    assert!(matches!(result, Err(TransportError::Unreachable { .. })));
}

#[tokio::test(start_paused = true)]
async fn isolate_applies_to_every_peer() {
    let network = MemoryNetwork::new(5);
    let (a, _) = start(&network, 1);
    network.isolate(node(1));
    let (_b, _) = start(&network, 2);
    let result = a.call(node(2), Bytes::from_static(b"x"), TIMEOUT).await;
    assert!(matches!(result, Err(TransportError::Unreachable { .. })));
    network.heal();
    assert!(
        a.call(node(2), Bytes::from_static(b"x"), TIMEOUT)
            .await
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn crash_and_restart() {
    let network = MemoryNetwork::new(9);
    let (a, _) = start(&network, 1);
    let (b, _) = start(&network, 2);

    network.crash(node(2));
    let result = a.call(node(2), Bytes::from_static(b"x"), TIMEOUT).await;
    assert!(matches!(result, Err(TransportError::Unreachable { .. })));
    // The crashed endpoint itself cannot send.
    let result = b.call(node(1), Bytes::from_static(b"x"), TIMEOUT).await;
    assert_eq!(result, Err(TransportError::Shutdown));
    assert!(
        network.register(node(2)).is_err(),
        "crashed until restarted"
    );

    network.restart(node(2));
    let (b2, _) = start(&network, 2);
    assert!(
        a.call(node(2), Bytes::from_static(b"x"), TIMEOUT)
            .await
            .is_ok()
    );
    assert!(
        b2.call(node(1), Bytes::from_static(b"x"), TIMEOUT)
            .await
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn crash_during_a_call_is_outcome_unknown() {
    let network = MemoryNetwork::new(9);
    let (a, _) = start(&network, 1);
    let b = network.register(node(2)).unwrap();
    let b_handler = Arc::new(EchoHandler::with_sleep(Duration::from_millis(500)));
    b.set_handler(b_handler.clone());

    let call = tokio::spawn({
        let a = a.clone();
        async move { a.call(node(2), Bytes::from_static(b"sleep"), TIMEOUT).await }
    });
    assert!(common::wait_until(TIMEOUT, || b_handler.request_count() == 1).await);
    network.crash(node(2));
    let result = call.await.unwrap();
    assert_eq!(result, Err(TransportError::Timeout { node: node(2) }));
}

#[tokio::test(start_paused = true)]
async fn shutdown_refuses_both_ways() {
    let network = MemoryNetwork::new(9);
    let (a, _) = start(&network, 1);
    let (b, _) = start(&network, 2);
    b.shutdown().await;
    let result = a.call(node(2), Bytes::from_static(b"x"), TIMEOUT).await;
    assert!(matches!(result, Err(TransportError::Unreachable { .. })));
    let result = b.call(node(1), Bytes::from_static(b"x"), TIMEOUT).await;
    assert_eq!(result, Err(TransportError::Shutdown));
}

#[tokio::test(start_paused = true)]
async fn stream_transfers_in_order_with_bounded_buffering() {
    let network = MemoryNetwork::new(11);
    let (a, _) = start(&network, 1);
    let (_b, b_handler) = start(&network, 2);
    *b_handler.read_pause.lock().unwrap() = Duration::from_millis(1);

    let chunk_len = 64 * 1024;
    let chunks = 64u64;
    let mut stream = a
        .open_stream(node(2), Bytes::from_static(b"snapshot"), TIMEOUT)
        .await
        .unwrap();
    for index in 0..chunks {
        let chunk = pattern_chunk(index * chunk_len as u64, chunk_len);
        stream.write(chunk).await.unwrap();
    }
    let response = stream.finish().await.unwrap();
    let total = chunks * chunk_len as u64;
    assert_eq!(response.as_ref(), total.to_le_bytes());
    assert_eq!(
        b_handler.stream_bytes_held_max.load(Ordering::SeqCst),
        chunk_len as u64
    );
}

#[tokio::test(start_paused = true)]
async fn stream_rejected_by_handler_reports_remote_error() {
    let network = MemoryNetwork::new(11);
    let (a, _) = start(&network, 1);
    let (_b, _) = start(&network, 2);
    let mut stream = a
        .open_stream(node(2), Bytes::from_static(b"reject"), TIMEOUT)
        .await
        .unwrap();
    let mut outcome = Ok(());
    for index in 0..32u64 {
        outcome = stream.write(pattern_chunk(index * 1024, 1024)).await;
        if outcome.is_err() {
            break;
        }
    }
    let finished = stream.finish().await;
    let remote =
        |result: &Result<_, TransportError>| matches!(result, Err(TransportError::Remote { .. }));
    assert!(
        remote(&finished) || outcome.is_err(),
        "{outcome:?} / {finished:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn abandoned_stream_is_an_error_for_the_receiver() {
    let network = MemoryNetwork::new(11);
    let (a, _) = start(&network, 1);
    let (_b, b_handler) = start(&network, 2);
    let mut stream = a
        .open_stream(node(2), Bytes::from_static(b"snapshot"), TIMEOUT)
        .await
        .unwrap();
    stream.write(pattern_chunk(0, 1024)).await.unwrap();
    drop(stream);
    // The handler sees an error, not a clean end.
    let errors = || b_handler.stream_errors.load(Ordering::SeqCst);
    assert!(common::wait_until(TIMEOUT, || errors() == 1).await);
    assert_eq!(b_handler.stream_bytes_total.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn dropped_stream_open_times_out() {
    let network = MemoryNetwork::with_fault_plan(3, FaultPlan::lossy(1.0, 0, 0));
    let (a, _) = start(&network, 1);
    let (_b, _) = start(&network, 2);
    let result = a
        .open_stream(node(2), Bytes::from_static(b"snapshot"), TIMEOUT)
        .await;
    assert_eq!(
        result.unwrap_err(),
        TransportError::Timeout { node: node(2) }
    );
}
