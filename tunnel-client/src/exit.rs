//! Exit codes of `porthole`, for scripts and CI: what went wrong, by number.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | clean stop (Ctrl-C/SIGTERM), or `porthole wait` matched |
//! | 1 | runtime error: the relay stayed unreachable, a local failure |
//! | 2 | usage or configuration error (bad flag, target, pin, missing token) |
//! | 3 | refused: the relay refused the token, the name or a limit, or the relay's certificate was not trusted |
//! | 4 | `porthole wait` timed out without a matching exchange |

use std::fmt;

/// Clean stop.
pub const OK: u8 = 0;
/// Runtime error.
pub const RUNTIME: u8 = 1;
/// Usage or configuration error (clap uses 2 for bad arguments too).
pub const USAGE: u8 = 2;
/// Refused by the relay, or the relay refused by us (trust).
pub const REFUSED: u8 = 3;
/// `porthole wait` timed out.
pub const TIMEOUT: u8 = 4;

/// An error that carries its exit code; anything else exits with [`RUNTIME`].
#[derive(Debug)]
pub struct Exit {
    /// The code to exit with.
    pub code: u8,
    /// The sentence to print.
    pub message: String,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// A usage/configuration error with this sentence.
pub fn usage(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Exit {
        code: USAGE,
        message: format!("{e:#}"),
    })
}

/// A refusal with this sentence.
pub fn refused(message: String) -> anyhow::Error {
    anyhow::Error::new(Exit {
        code: REFUSED,
        message,
    })
}

/// The exit code for an error.
pub fn code(e: &anyhow::Error) -> u8 {
    e.chain()
        .find_map(|c| c.downcast_ref::<Exit>())
        .map_or(RUNTIME, |x| x.code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn codes_survive_context() {
        let e = refused("the relay refused the token".into());
        assert_eq!(code(&e), REFUSED);
        let e = Err::<(), _>(usage(anyhow::anyhow!("bad target")))
            .context("starting")
            .unwrap_err();
        assert_eq!(code(&e), USAGE);
        assert_eq!(code(&anyhow::anyhow!("lost")), RUNTIME);
    }
}
