//! Twilio: the Media Streams wire protocol, TwiML, request signatures and
//! the REST API.

pub mod protocol;
pub(crate) mod rest;
pub mod signature;
pub mod twiml;
