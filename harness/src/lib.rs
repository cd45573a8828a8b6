//! The harness: a stateless loop that reads a session's log, rebuilds the model
//! request from events alone, calls the model and routes tool calls to the
//! sandbox. Nothing it holds in memory is needed after a crash: `wake` resumes.
#![forbid(unsafe_code)]
