//! Web transports on the gateway port (WEB.md): each one only moves protocol frames between HTTP-borne bytes and the core's session; no session rule lives here.

pub mod ws;
