//! Loopback benchmark of the QUIC transport: small-RPC round trips per second with p50/p99 at
//! 1 and 64 concurrent callers, and bulk stream throughput. Prints one JSON line.
//! Run in release: `cargo run --release -p nodedb-cluster-transport --example transport_bench`.

use nodedb_cluster_core::NodeId;
use nodedb_cluster_transport::quic::{QuicConfig, QuicTimings, QuicTransport};
use nodedb_cluster_transport::tls::{self, TlsMaterial, TlsMode};
use nodedb_cluster_transport::{
    BoxFuture, Bytes, Handler, HandlerError, InboundStream, STREAM_CHUNK_BYTES_MAX, Transport,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WARM_UP_CALLS: usize = 1_000;
const SINGLE_CALLER_CALLS: usize = 10_000;
const CONCURRENT_CALLERS: usize = 64;
const CALLS_PER_CONCURRENT_CALLER: usize = 500;
const RPC_PAYLOAD_BYTES: usize = 64;
const STREAM_BYTES: usize = 256 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ca = tls::generate_ca("bench")?;
    let client = bind(&ca, 1)?;
    let server = bind(&ca, 2)?;
    server.set_handler(Arc::new(BenchHandler));
    client.set_peer_addr(NodeId(2), server.local_addr()?);

    let payload = Bytes::from(vec![7u8; RPC_PAYLOAD_BYTES]);
    for _ in 0..WARM_UP_CALLS {
        client.call(NodeId(2), payload.clone(), TIMEOUT).await?;
    }
    let single = rpc_run(&client, &payload, 1, SINGLE_CALLER_CALLS).await?;
    let concurrent = rpc_run(
        &client,
        &payload,
        CONCURRENT_CALLERS,
        CALLS_PER_CONCURRENT_CALLER,
    )
    .await?;
    let stream_mib_per_s = stream_run(&client).await?;

    println!(
        "{{\"bench\":\"transport\",\"build\":\"{}\",\"rpc_payload_bytes\":{RPC_PAYLOAD_BYTES},\
         \"rpc_1\":{},\"rpc_{CONCURRENT_CALLERS}\":{},\
         \"stream_bytes\":{STREAM_BYTES},\"stream_mib_per_s\":{stream_mib_per_s:.1}}}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        single.json(),
        concurrent.json(),
    );
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

struct RpcResult {
    calls: usize,
    per_second: f64,
    p50_us: u128,
    p99_us: u128,
}

impl RpcResult {
    fn json(&self) -> String {
        format!(
            "{{\"calls\":{},\"per_second\":{:.0},\"p50_us\":{},\"p99_us\":{}}}",
            self.calls, self.per_second, self.p50_us, self.p99_us
        )
    }
}

async fn rpc_run(
    client: &Arc<QuicTransport>,
    payload: &Bytes,
    callers: usize,
    calls_per_caller: usize,
) -> Result<RpcResult, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let client = Arc::clone(client);
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(calls_per_caller);
            for _ in 0..calls_per_caller {
                let call_started = Instant::now();
                client.call(NodeId(2), payload.clone(), TIMEOUT).await?;
                latencies.push(call_started.elapsed());
            }
            Ok::<_, nodedb_cluster_transport::TransportError>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(callers * calls_per_caller);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let at = |quantile: f64| {
        let index = ((latencies.len() as f64 - 1.0) * quantile).round() as usize;
        latencies[index].as_micros()
    };
    Ok(RpcResult {
        calls: latencies.len(),
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_us: at(0.50),
        p99_us: at(0.99),
    })
}

async fn stream_run(client: &Arc<QuicTransport>) -> Result<f64, Box<dyn std::error::Error>> {
    let chunk = Bytes::from(vec![3u8; STREAM_CHUNK_BYTES_MAX]);
    let started = Instant::now();
    let mut stream = client
        .open_stream(NodeId(2), Bytes::from_static(b"bench"), TIMEOUT)
        .await?;
    for _ in 0..STREAM_BYTES / STREAM_CHUNK_BYTES_MAX {
        stream.write(chunk.clone()).await?;
    }
    let response = stream.finish().await?;
    let elapsed = started.elapsed();
    let received = u64::from_le_bytes(response.as_ref().try_into()?);
    if received != STREAM_BYTES as u64 {
        return Err(format!("receiver got {received} bytes, sent {STREAM_BYTES}").into());
    }
    Ok(STREAM_BYTES as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64())
}

fn bind(ca: &tls::CaMaterial, id: u64) -> Result<Arc<QuicTransport>, Box<dyn std::error::Error>> {
    Ok(QuicTransport::bind(QuicConfig {
        node_id: NodeId(id),
        listen_addr: "127.0.0.1:0".parse()?,
        tls: TlsMode::Secure(TlsMaterial::issue(ca, NodeId(id))?),
        timings: QuicTimings::default(),
    })?)
}

/// Echoes requests; counts stream bytes and answers with the total.
struct BenchHandler;

impl Handler for BenchHandler {
    fn on_request(
        &self,
        _from: NodeId,
        request: Bytes,
    ) -> BoxFuture<'_, Result<Bytes, HandlerError>> {
        Box::pin(async move { Ok(request) })
    }

    fn on_stream(
        &self,
        _from: NodeId,
        _header: Bytes,
        mut body: InboundStream,
    ) -> BoxFuture<'_, Result<Bytes, HandlerError>> {
        Box::pin(async move {
            let mut total: u64 = 0;
            while let Some(chunk) = body
                .next_chunk()
                .await
                .map_err(|error| HandlerError::Failed(error.to_string()))?
            {
                total += chunk.len() as u64;
            }
            Ok(Bytes::copy_from_slice(&total.to_le_bytes()))
        })
    }
}
