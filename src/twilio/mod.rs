//! Twilio: the Media Streams wire protocol and TwiML.

pub mod protocol;
pub mod twiml;
