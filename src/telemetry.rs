//! Logging: `tracing` with an `EnvFilter` (RUST_LOG, default `info`), as text or JSON lines.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber. `json` switches to one JSON object per line (for log shippers).
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,sea_orm=warn,aws=warn,aws_smithy_runtime=warn")
    });
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // try_init: a second call (tests, tools) keeps the first subscriber instead of panicking.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
