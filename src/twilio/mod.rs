//! Twilio: the Media Streams wire protocol, TwiML and request signatures.

pub mod protocol;
pub mod signature;
pub mod twiml;
