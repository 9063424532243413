//! The `kube-audit-relay` binary: parses the command line, binds the listener, turns
//! SIGTERM/SIGINT into the shutdown token and hands over to the library.

use anyhow::Context;
use clap::Parser;
use kube_audit_relay::certs::{self, GenOptions, WebhookConfigFiles};
use kube_audit_relay::cli::{Cli, Command, LogFormat};
use kube_audit_relay::config::Config;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run { config } => {
            if let Some(e) = kube_audit_relay::heap::bound_retention() {
                tracing::warn!(error = %e, variable = kube_audit_relay::heap::VARIABLE,
                    "could not restart with a fixed malloc threshold; freed large buffers may stay in RSS");
            }
            let config = match &config {
                Some(path) => Config::load(path)?,
                None => Config::builtin_default(),
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(run(config))
        }
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            let effective = config
                .to_toml()
                .map_err(|e| anyhow::anyhow!("cannot print the effective configuration: {e}"))?;
            println!(
                "{file}: OK\n# The effective configuration, every default filled in:\n{effective}",
                file = file.display()
            );
            Ok(())
        }
        Command::GenCerts { dir, test_extras } => {
            certs::generate(&dir, GenOptions { test_extras })?;
            eprintln!(
                "wrote ca.crt, server.crt/key, client.crt/key to {}",
                dir.display()
            );
            Ok(())
        }
        Command::GenSigningKey { dir } => {
            let (key, public, id) = kube_audit_relay::integrity::keys::generate(&dir)?;
            eprintln!(
                "wrote {} (integrity.signing_key, mode 0600) and {} (verify --key); key id {id}",
                key.display(),
                public.display()
            );
            Ok(())
        }
        Command::Verify {
            keys,
            json,
            allow_open_end,
            files,
        } => verify(&keys, json, allow_open_end, &files),
        Command::WebhookConfig {
            url,
            ca,
            client_cert,
            client_key,
        } => {
            let files = WebhookConfigFiles {
                ca: ca.as_deref(),
                client_cert: client_cert.as_deref(),
                client_key: client_key.as_deref(),
            };
            print!("{}", certs::webhook_kubeconfig(&url, &files)?);
            Ok(())
        }
    }
}

/// `verify`: exit 0 for a complete, unmodified trail, 1 for an integrity failure, 2 when the
/// input cannot be read.
fn verify(
    keys: &[std::path::PathBuf],
    json: bool,
    allow_open_end: bool,
    files: &[std::path::PathBuf],
) -> anyhow::Result<()> {
    use kube_audit_relay::integrity::{keys::PublicKey, verify};
    let unreadable = |e: &dyn std::fmt::Display| -> ! {
        eprintln!("verify: {e}");
        std::process::exit(2)
    };
    let keys = keys
        .iter()
        .map(|k| PublicKey::load(k))
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| unreadable(&e));
    let options = verify::Options {
        keys,
        allow_open_end,
    };
    let report = verify::verify(files, &options).unwrap_or_else(|e| unreadable(&e));
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    std::process::exit(if report.ok() { 0 } else { 1 })
}

async fn run(config: Config) -> anyhow::Result<()> {
    let listeners = kube_audit_relay::Listeners::bind(&config).await?;
    let app = kube_audit_relay::App::build(config, listeners).await?;
    let shutdown = CancellationToken::new();
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stop signal received");
        signal_token.cancel();
    });
    app.serve(shutdown).await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
