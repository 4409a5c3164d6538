//! The core's side of the WebSocket transport: the switch after a 101, and one I/O step of an upgraded connection (messages → frames → the same session path as TLS frames).

use bytes::BytesMut;

use super::{ConnKey, Core, Outcome};
use crate::proto::DisconnectReason;
use crate::runtime::framing::Framing;
use crate::runtime::web::ws::{Input, WsState};

impl Core {
    /// `gate_http` answered 101: from now on the connection carries
    /// WebSocket frames (anything pipelined behind the request is already
    /// in `rbuf`). The handshake deadline keeps running until CONNECT.
    pub(super) fn upgrade_ws(&mut self, key: ConnKey, eof: bool) -> Outcome {
        let mode = self.live.gate.ws_mode;
        let Some(conn) = self.conn(key) else { return Outcome::Close };
        conn.framing = Framing::Ws(Box::new(WsState::new(conn.out.len(), mode)));
        self.on_ws(key, eof)
    }

    /// An upgraded connection had I/O: decode client messages, run the
    /// session over the frames they carried, queue the write.
    pub(super) fn on_ws(&mut self, key: ConnKey, eof: bool) -> Outcome {
        let now = self.shared.clock.mono_ms();
        let max_msg = self.shared.limits.max_frame as usize + 4;
        let Some(conn) = self.conn(key) else { return Outcome::Close };
        let Framing::Ws(ws) = &mut conn.framing else { return Outcome::Close };
        match ws.decode(&mut conn.rbuf, max_msg, &mut conn.out) {
            Ok(Input::Open) => {}
            Ok(Input::Closed) => {
                // The client's close frame was echoed (or ours was already
                // out): the device left; its messages stay in the inbox.
                conn.session.abort();
                // The echo (or our close) goes out before the socket is dropped.
                self.transmit(key, 0);
                return Outcome::Close;
            }
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket input refused");
                conn.rbuf.clear();
                ws.frames.clear();
                match e.close_code() {
                    Some(code) => {
                        // No DISCONNECT before these closes (WEB.md): the
                        // session goes to Closing with its frame discarded,
                        // so the usual linger and half-close follow.
                        ws.push_close(&mut conn.out, code);
                        conn.session.close(now, DisconnectReason::ProtocolError, "", &mut BytesMut::new());
                    }
                    None => conn.session.close(now, DisconnectReason::ProtocolError, "message is not exactly one frame", &mut conn.out),
                }
                return self.after_io(key);
            }
        }
        if let Some(m) = self.process_frames(key) {
            return Outcome::Migrate(m);
        }
        if eof {
            if let Some(c) = self.conn(key) {
                c.session.abort();
            }
            return Outcome::Close;
        }
        // As on a TLS connection: the write joins the turn's batch
        // (`flush.rs`), so what this step and the rest of the turn produce
        // for the connection (SENDACKs, PUSHes refilled by a PUSHACK, PUSHes
        // from other senders) leaves in one wrap, one seal, one `send`.
        self.after_io_deferred(key)
    }
}
