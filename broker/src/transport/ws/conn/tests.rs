//! `WsTransport` over loopback sockets, against tungstenite's client.

use super::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

fn settings() -> crate::node::Settings {
    crate::node::Settings::from_config(&crate::config::Config::default())
}

/// A server transport and a tungstenite client on loopback.
async fn pair() -> (WsTransport, WebSocketStream<TcpStream>) {
    pair_with(false).await
}

/// [`pair`]; with `small_buffers`, a 16 KiB send buffer at the server and a 32 KiB
/// receive buffer at the client, so large writes are partial and wait.
async fn pair_with(small_buffers: bool) -> (WsTransport, WebSocketStream<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        if small_buffers {
            stream.set_nodelay(true).unwrap();
            let socket = socket2::SockRef::from(&stream);
            socket.set_send_buffer_size(16_384).unwrap();
        }
        let ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        WsTransport::new(ws.into_inner(), &settings())
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    if small_buffers {
        stream.set_nodelay(true).unwrap();
        let socket = socket2::SockRef::from(&stream);
        socket.set_recv_buffer_size(32_768).unwrap();
    }
    let (client, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .unwrap();
    (server.await.unwrap(), client)
}

async fn recv(transport: &mut WsTransport) -> Inbound {
    tokio::time::timeout(Duration::from_secs(10), transport.recv())
        .await
        .expect("nothing arrived")
}

/// Text, a message in fragments with a ping between them (answered with a pong),
/// binary, then the client's close (answered with its code).
#[tokio::test]
async fn what_a_client_sends_arrives_as_inbound_items() {
    let (mut server, mut client) = pair().await;
    client.send(Message::text("one")).await.unwrap();
    let fragment = |data: &str, opcode, fin| {
        Message::Frame(Frame::message(data.as_bytes().to_vec(), opcode, fin))
    };
    client
        .feed(fragment("tw", OpCode::Data(Data::Text), false))
        .await
        .unwrap();
    client
        .feed(Message::Ping(b"p".to_vec().into()))
        .await
        .unwrap();
    client
        .feed(fragment("o", OpCode::Data(Data::Continue), true))
        .await
        .unwrap();
    client.send(Message::binary(vec![1, 2])).await.unwrap();
    match recv(&mut server).await {
        Inbound::Text(t) => assert_eq!(&t[..], b"one"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(recv(&mut server).await, Inbound::Activity));
    match recv(&mut server).await {
        Inbound::Text(t) => assert_eq!(&t[..], b"two"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(recv(&mut server).await, Inbound::Binary));
    // The pong went out; tungstenite's client reports it.
    match tokio::time::timeout(Duration::from_secs(10), client.next())
        .await
        .unwrap()
    {
        Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"p"),
        other => panic!("{other:?}"),
    }
    client
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    assert!(matches!(recv(&mut server).await, Inbound::Closed));
    match tokio::time::timeout(Duration::from_secs(10), client.next())
        .await
        .unwrap()
    {
        Some(Ok(Message::Close(Some(close)))) => assert_eq!(u16::from(close.code), 1000),
        other => panic!("{other:?}"),
    }
}

/// After the server's close, nothing more goes out: the client's answering close and a
/// ping sent before it get no reply (a second close or a pong would break RFC 6455).
#[tokio::test]
async fn nothing_follows_the_servers_close() {
    let (mut server, mut client) = pair().await;
    let closing = tokio::spawn(async move {
        server.close(CloseCode::Restart, "restarting").await;
    });
    match tokio::time::timeout(Duration::from_secs(10), client.next())
        .await
        .unwrap()
    {
        Some(Ok(Message::Close(Some(close)))) => assert_eq!(u16::from(close.code), 1012),
        other => panic!("{other:?}"),
    }
    // tungstenite answers the close; then the server ends the connection.
    let after: Vec<_> = tokio::time::timeout(Duration::from_secs(10), async {
        let mut after = Vec::new();
        while let Some(item) = client.next().await {
            after.push(format!("{item:?}"));
        }
        after
    })
    .await
    .unwrap();
    assert!(after.is_empty(), "after the close: {after:?}");
    closing.await.unwrap();
}

/// A message over `limits.max_frame_bytes`, in one frame or in fragments, is refused.
#[tokio::test]
async fn a_message_over_the_limit_is_too_large() {
    let max = settings().max_frame_bytes;
    let (mut server, mut client) = pair().await;
    client
        .send(Message::text("x".repeat(max + 1)))
        .await
        .unwrap();
    assert!(matches!(recv(&mut server).await, Inbound::TooLarge));
    let (mut server, mut client) = pair().await;
    let half = "y".repeat(max / 2 + 1);
    let fragment =
        |opcode, fin| Message::Frame(Frame::message(half.as_bytes().to_vec(), opcode, fin));
    client
        .feed(fragment(OpCode::Data(Data::Text), false))
        .await
        .unwrap();
    client
        .send(fragment(OpCode::Data(Data::Continue), true))
        .await
        .unwrap();
    assert!(matches!(recv(&mut server).await, Inbound::TooLarge));
}

/// An idle connection holds no buffer: what a read brought is given back once handled.
#[tokio::test]
async fn an_idle_connection_keeps_no_read_buffer() {
    let (mut server, mut client) = pair().await;
    client.send(Message::text("hello")).await.unwrap();
    assert!(matches!(recv(&mut server).await, Inbound::Text(_)));
    assert_eq!(server.read.capacity(), 0);
}

/// Frames of every header size, some larger than the gather buffer, written through a
/// small send buffer (so writes are partial and wait), reach a WebSocket client whole
/// and in order.
#[tokio::test]
async fn a_batch_arrives_whole_and_in_order_through_partial_writes() {
    // Headers of 2, 4 and 10 bytes; up to 65,000 gathered, larger ones written alone.
    let sizes = [
        0, 1, 125, 126, 127, 1_000, 30_000, 65_000, 60_000, 65_000, 65_000, 200_000,
    ];
    let frames: Vec<EncodedFrame> = (0..240)
        .map(|i| {
            let n = sizes[i % sizes.len()];
            let mut text = format!("{i}:");
            text.extend(std::iter::repeat_n('x', n));
            EncodedFrame::from_json(text)
        })
        .collect();
    let expected: Vec<String> = frames.iter().map(|f| f.as_str().to_string()).collect();
    let (mut transport, mut client) = pair_with(true).await;
    let server = tokio::spawn(async move {
        let mut batch: VecDeque<EncodedFrame> = frames.into();
        transport.send(&mut batch).await.unwrap();
        assert!(batch.is_empty());
        transport
    });
    let read = async {
        let mut got = Vec::new();
        while got.len() < expected.len() {
            match client.next().await.unwrap().unwrap() {
                Message::Text(text) => got.push(text.to_string()),
                other => panic!("unexpected {other:?}"),
            }
        }
        got
    };
    let got = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap();
    assert!(got == expected, "frames arrived changed or out of order");
    let _transport = server.await.unwrap();
}

/// A write abandoned half way through a frame (a client that stopped reading) is
/// finished before the close frame: the client reads whole frames, then the close.
#[tokio::test]
async fn a_close_after_an_abandoned_write_follows_whole_frames() {
    let frames: Vec<EncodedFrame> = (0..2_000)
        .map(|i| EncodedFrame::from_json(format!("{i}:{}", "z".repeat(999 + i % 7))))
        .collect();
    let expected: Vec<String> = frames.iter().map(|f| f.as_str().to_string()).collect();
    let (abandoned_tx, abandoned_rx) = tokio::sync::oneshot::channel();
    let (mut transport, mut client) = pair_with(true).await;
    let server = tokio::spawn(async move {
        let mut batch: VecDeque<EncodedFrame> = frames.into();
        // The client reads nothing yet: 2 MB cannot all go out, so this is abandoned.
        let send = transport.send(&mut batch);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), send)
                .await
                .is_err()
        );
        abandoned_tx
            .send(transport.writes.side.lock().partial.is_some())
            .unwrap();
        transport
            .close(CloseCode::SlowConsumer, "slow consumer")
            .await;
    });
    let mid_frame = tokio::time::timeout(Duration::from_secs(10), abandoned_rx)
        .await
        .unwrap()
        .unwrap();
    let read = async {
        let mut got = Vec::new();
        loop {
            match client.next().await {
                Some(Ok(Message::Text(text))) => got.push(text.to_string()),
                Some(Ok(Message::Close(Some(close)))) => return (got, u16::from(close.code)),
                other => panic!("expected whole frames, then the close: {other:?}"),
            }
        }
    };
    let (got, code) = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap();
    assert_eq!(code, 4009);
    assert!(
        !got.is_empty() && got.len() < expected.len(),
        "{} frames",
        got.len()
    );
    assert!(
        got[..] == expected[..got.len()],
        "frames arrived changed or out of order"
    );
    assert!(
        mid_frame,
        "the write stopped between frames: this case was not tested"
    );
    server.await.unwrap();
}

/// Reads `n` text frames.
async fn read_texts(client: &mut WebSocketStream<TcpStream>, n: usize) -> Vec<String> {
    let read = async {
        let mut got = Vec::new();
        while got.len() < n {
            match client.next().await.unwrap().unwrap() {
                Message::Text(text) => got.push(text.to_string()),
                other => panic!("unexpected {other:?}"),
            }
        }
        got
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the frames did not arrive")
}

/// Frames written directly (from another thread, as a publisher does) and frames the
/// session writes reach the client whole and in the order they were written.
#[tokio::test]
async fn direct_writes_and_the_sessions_writes_interleave_whole_frames() {
    let (mut transport, mut client) = pair().await;
    let direct = transport
        .direct()
        .expect("a WebSocket allows direct writes");
    let frame = |s: &str| EncodedFrame::from_json(format!("\"{s}\""));
    transport.send(&mut [frame("a")].into()).await.unwrap();
    let from_another_thread = {
        let direct = direct.clone();
        std::thread::spawn(move || direct.try_write(&frame("b")))
            .join()
            .unwrap()
    };
    assert_eq!(from_another_thread, Direct::Written);
    transport.send(&mut [frame("c")].into()).await.unwrap();
    assert_eq!(direct.try_write(&frame("d")), Direct::Written);
    let got = read_texts(&mut client, 4).await;
    assert_eq!(got, ["\"a\"", "\"b\"", "\"c\"", "\"d\""]);
}

/// A direct write the socket took only part of is finished by the session's next write,
/// before its own frames; no direct write goes while it is unfinished.
#[tokio::test]
async fn a_partial_direct_write_is_finished_before_anything_else() {
    let (transport, mut client) = pair_with(true).await;
    let direct = transport.direct().unwrap();
    // Larger than the socket's buffers: the first write goes part way.
    let frames: Vec<EncodedFrame> = (0..20)
        .map(|i| EncodedFrame::from_json(format!("\"{i}:{}\"", "y".repeat(100_000))))
        .collect();
    // The client reads nothing yet: the socket fills, and one write goes only part way.
    let mut written = Vec::new();
    let mut begun = false;
    for frame in &frames {
        match direct.try_write(frame) {
            Direct::Written => written.push(frame.as_str().to_string()),
            Direct::Begun => {
                written.push(frame.as_str().to_string());
                begun = true;
                break;
            }
            Direct::Not => break,
        }
    }
    assert!(begun, "no write was partial: this case was not tested");
    assert_eq!(direct.try_write(&frames[19]), Direct::Not);
    the_session_finishes_and_every_frame_arrives(transport, &mut client, written).await;
}

/// The session writes one last frame (finishing a partly written one first), and the
/// client reads `written` and that frame, whole and in order.
async fn the_session_finishes_and_every_frame_arrives(
    mut transport: WsTransport,
    client: &mut WebSocketStream<TcpStream>,
    mut written: Vec<String>,
) {
    let last = EncodedFrame::from_json("\"last\"".to_string());
    written.push(last.as_str().to_string());
    let server = tokio::spawn(async move {
        transport.send(&mut [last].into()).await.unwrap();
        transport
    });
    let got = read_texts(client, written.len()).await;
    assert!(got == written, "frames arrived changed or out of order");
    drop(server.await.unwrap());
}

/// Queued frames written directly in one go (a deferred fan-out's flush) arrive whole
/// and in order, small ones gathered, large ones through a write the socket took only
/// part of, which the session then finishes before its own frames.
#[tokio::test]
async fn queued_frames_written_directly_arrive_whole_and_in_order() {
    let (transport, mut client) = pair_with(true).await;
    let direct = transport.direct().unwrap();
    let frame = |s: String| EncodedFrame::from_json(format!("\"{s}\""));
    let mut small: VecDeque<EncodedFrame> = (0..50).map(|i| frame(i.to_string())).collect();
    assert_eq!(direct.try_write_queued(&mut small), Direct::Written);
    assert!(small.is_empty());
    let mut expected: Vec<String> = (0..50).map(|i| format!("\"{i}\"")).collect();
    // Larger than the socket's buffers, the client reading nothing yet.
    let mut large: VecDeque<EncodedFrame> = (0..20)
        .map(|i| frame(format!("{i}:{}", "z".repeat(100_000))))
        .collect();
    let all: Vec<String> = large.iter().map(|f| f.as_str().to_string()).collect();
    assert_eq!(direct.try_write_queued(&mut large), Direct::Begun);
    let went = all.len() - large.len();
    expected.extend(all[..went].iter().cloned());
    assert_eq!(
        direct.try_write_queued(&mut large),
        Direct::Not,
        "a partial write first"
    );
    the_session_finishes_and_every_frame_arrives(transport, &mut client, expected).await;
}

/// Nothing is written directly after the close frame, nor once the transport (and its
/// socket) is gone.
#[tokio::test]
async fn no_direct_write_after_the_close_or_the_socket() {
    let (mut transport, _client) = pair().await;
    let direct = transport.direct().unwrap();
    let frame = EncodedFrame::from_json("\"x\"".to_string());
    let _ = tokio::time::timeout(
        Duration::from_millis(100),
        transport.close(CloseCode::Restart, "bye"),
    )
    .await;
    assert_eq!(direct.try_write(&frame), Direct::Not);
    let (transport, _client) = pair().await;
    let direct = transport.direct().unwrap();
    drop(transport);
    assert_eq!(direct.try_write(&frame), Direct::Not);
}
