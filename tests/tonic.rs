//! `ScopeLayer` on tonic's server, unchanged: a gRPC unary method reads the store the layer
//! made from the request's metadata. The service is written by hand, as tonic's codegen would
//! write it (no `protoc` needed): `tonic::server::Grpc` with `tonic_prost::ProstCodec` and
//! hand-derived `prost::Message`s.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_hooks::tower::ScopeLayer;
use async_hooks::{AsyncLocalStorage, async_resource, bind};
use support::serial;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Status, body::Body};
use tonic_prost::ProstCodec;
use tower::Service;

static REQUEST_ID: AsyncLocalStorage<String> = AsyncLocalStorage::new().with_name("request-id");

#[derive(Clone, PartialEq, prost::Message)]
struct Ping {
    #[prost(string, tag = "1")]
    note: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Pong {
    /// The store, read in the method.
    #[prost(string, tag = "1")]
    request_id: String,
    /// The store, read in a nested `#[async_resource]` fn and a spawned bound task.
    #[prost(string, tag = "2")]
    nested: String,
    /// The metadata value, read by hand, to compare.
    #[prost(string, tag = "3")]
    metadata: String,
    #[prost(string, tag = "4")]
    note: String,
}

fn current_id() -> String {
    REQUEST_ID.with_store(|id| id.map_or_else(|| "-".to_owned(), Clone::clone))
}

#[async_resource]
async fn nested() -> String {
    tokio::task::yield_now().await;
    let spawned = tokio::spawn(bind!(async { current_id() })).await.unwrap();
    format!("{}+{spawned}", current_id())
}

/// The unary method `test.Echo/Whoami`.
async fn whoami(req: tonic::Request<Ping>) -> Result<tonic::Response<Pong>, Status> {
    let metadata = req
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let request_id = current_id();
    let nested = nested().await;
    Ok(tonic::Response::new(Pong {
        request_id,
        nested,
        metadata,
        note: req.into_inner().note,
    }))
}

/// What tonic's codegen writes for a service with one unary method.
#[derive(Clone)]
struct EchoServer;

impl NamedService for EchoServer {
    const NAME: &'static str = "test.Echo";
}

impl Service<http::Request<Body>> for EchoServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            match req.uri().path() {
                "/test.Echo/Whoami" => {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Pong, Ping>::default());
                    Ok(grpc.unary(tower::service_fn(whoami), req).await)
                }
                _ => Ok(Status::unimplemented("no such method").into_http()),
            }
        })
    }
}

async fn call_whoami(channel: Channel, id: &str) -> Result<Pong, Status> {
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let mut req = tonic::Request::new(Ping {
        note: format!("note {id}"),
    });
    req.metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    let path = http::uri::PathAndQuery::from_static("/test.Echo/Whoami");
    let res = client
        .unary(req, path, ProstCodec::<Ping, Pong>::default())
        .await?;
    Ok(res.into_inner())
}

#[test]
fn a_grpc_unary_method_reads_the_store_made_from_metadata() {
    let _serial = serial();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .enable_all()
        .build()
        .unwrap();
    let replies = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let layer = ScopeLayer::new(&REQUEST_ID, |req: &http::Request<Body>| {
            req.headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        });
        tokio::spawn(
            Server::builder()
                .layer(layer)
                .add_service(EchoServer)
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let calls = (0..50).map(|i| {
            let channel = channel.clone();
            async move {
                let id = format!("grpc-{i}");
                let reply = call_whoami(channel, &id).await;
                (id, reply)
            }
        });
        futures::future::join_all(calls).await
    });
    assert_eq!(replies.len(), 50);
    for (id, reply) in replies {
        let pong = reply.unwrap_or_else(|status| panic!("{id}: {status}"));
        assert_eq!(
            pong,
            Pong {
                request_id: id.clone(),
                nested: format!("{id}+{id}"),
                metadata: id.clone(),
                note: format!("note {id}"),
            }
        );
    }
}
