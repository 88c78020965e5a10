//! Logging set-up shared by `dmue-train` and `dmue-serve`: to stderr, level from `DMUE_LOG`
//! (default `info`), colours only on a terminal.

/// Installs the global subscriber; `timestamps` for long-running services.
pub fn init(timestamps: bool) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DMUE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if timestamps {
        builder.init();
    } else {
        builder.without_time().init();
    }
}
