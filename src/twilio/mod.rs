//! Twilio: the Media Streams wire protocol, TwiML, request signatures and
//! the REST API.

pub mod protocol;
pub mod rest;
pub mod signature;
pub mod twiml;
