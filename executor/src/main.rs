//! The in-sandbox executor: started once per sandbox, it serves agent_toolset
//! tool calls framed over its stdin/stdout.
#![forbid(unsafe_code)]

fn main() {}
