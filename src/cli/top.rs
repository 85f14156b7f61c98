//! `fondo-bridge top`: a live view of a running bridge from its admin endpoint, redrawn after
//! every scrape; `q`, Esc or Ctrl-C quits. The figures and rates come from
//! [`fondo_bridge::top`]; this file owns the terminal and lays a [`View`] out.
//!
//! The terminal is put back (raw mode off, main screen) however the command ends: on return by a
//! guard's drop, on a panic by the hook `ratatui::try_init` installs.

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use futures::StreamExt as _;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style, Stylize as _};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row as TableRow, Table, Wrap};
use ratatui::{DefaultTerminal, Frame};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use fondo_bridge::top::{Count, Model, Row, Scraper, TopError, View};

#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// The bridge's admin endpoint (its `admin.listen`).
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    pub admin: String,
    /// How often to scrape and redraw (`1s`, `500ms`).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

/// One scrape's outcome, when it was made (monotonic and wall clock).
type Outcome = (Instant, f64, Result<fondo_bridge::top::Scrape, TopError>);

pub async fn top(args: TopArgs) -> anyhow::Result<ExitCode> {
    let interval = args.interval.max(Duration::from_millis(100));
    // A scrape never takes longer than the time between two, nor less than a second to answer.
    let scraper = Scraper::new(&args.admin, interval.max(Duration::from_secs(1)))?;
    let stop = CancellationToken::new();
    super::spawn_signal_handler(stop.clone());
    let (tx, rx) = mpsc::channel(1);
    let scraping = tokio::spawn(scrape_every(scraper, interval, tx, stop.clone()));
    let restore = Restore;
    let result = match ratatui::try_init().context("setting up the terminal") {
        Ok(mut terminal) => show(&mut terminal, &args, rx, &stop).await,
        Err(e) => Err(e),
    };
    drop(restore);
    stop.cancel();
    scraping.abort();
    result.map(|()| ExitCode::SUCCESS)
}

/// Puts the terminal back when dropped.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Scrapes every `interval` (the first at once) and hands each outcome on, until `stop`.
async fn scrape_every(
    scraper: Scraper,
    interval: Duration,
    tx: mpsc::Sender<Outcome>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let outcome = scraper.scrape().await;
        if tx
            .send((Instant::now(), unix_now(), outcome))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Redraws after each scrape and on resize; returns on a quit key or `stop`.
async fn show(
    terminal: &mut DefaultTerminal,
    args: &TopArgs,
    mut scrapes: mpsc::Receiver<Outcome>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut model = Model::default();
    let mut keys = EventStream::new();
    loop {
        terminal.draw(|f| draw(f, args, &model))?;
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            outcome = scrapes.recv() => match outcome {
                Some((at, unix, outcome)) => model.update(at, unix, outcome),
                None => return Ok(()),
            },
            event = keys.next() => match event {
                Some(Ok(Event::Key(key))) if quits(&key) => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("reading the terminal"),
                None => return Ok(()),
            },
        }
    }
}

fn quits(key: &KeyEvent) -> bool {
    key.kind == KeyEventKind::Press
        && match key.code {
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => true,
            KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Layout: a header, the state of the scrape, then one table per kind of figure.

fn draw(f: &mut Frame<'_>, args: &TopArgs, model: &Model) {
    let Some(view) = model.view() else {
        let [head, body] =
            Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(f.area());
        f.render_widget(header(args, None), head);
        let text = match model.error() {
            Some(e) => format!(
                "admin endpoint unreachable: {e}\nretrying every {}",
                humantime::format_duration(args.interval)
            ),
            None => format!("connecting to {} ...", args.admin),
        };
        f.render_widget(
            Paragraph::new(text)
                .fg(Color::Yellow)
                .wrap(Wrap { trim: false }),
            body,
        );
        return;
    };
    let table_height = |rows: usize| u16::try_from(rows.max(1) + 3).unwrap_or(u16::MAX);
    let [head, status, sinks, routes, lower, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(table_height(view.sinks.len())),
        Constraint::Length(table_height(view.routes.len())),
        Constraint::Length(table_height(view.sources.len().max(view.streams.len()))),
        Constraint::Fill(1),
    ])
    .areas(f.area());
    f.render_widget(header(args, Some(view)), head);
    f.render_widget(scrape_state(args, model), status);
    f.render_widget(flow_table("Sinks", "SINK", false, &view.sinks), sinks);
    f.render_widget(flow_table("Routes", "ROUTE", true, &view.routes), routes);
    let [sources, streams] =
        Layout::horizontal([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(lower);
    f.render_widget(sources_table(view), sources);
    f.render_widget(streams_table(view), streams);
    let [dead, spool, ready] = Layout::horizontal([
        Constraint::Percentage(30),
        Constraint::Percentage(25),
        Constraint::Percentage(45),
    ])
    .areas(bottom);
    f.render_widget(dead_letters(view), dead);
    f.render_widget(spool_box(view), spool);
    f.render_widget(readiness_box(view), ready);
}

fn header(args: &TopArgs, view: Option<&View>) -> Line<'static> {
    let mut spans = vec![
        Span::styled(
            "fondo-bridge top",
            Style::new().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!("  {}", args.admin)),
    ];
    if let Some(v) = view {
        if let Some(version) = &v.version {
            spans.push(Span::raw(format!("  v{version}")));
        }
        if let Some(up) = v.uptime {
            spans.push(Span::raw(format!("  up {}", uptime(up))));
        }
        spans.push(match &v.readiness {
            Some(r) if r.ready => Span::styled("  READY", Style::new().fg(Color::Green)),
            Some(_) => Span::styled("  NOT READY", Style::new().fg(Color::Red)),
            None => Span::raw("  readiness unknown"),
        });
        spans.push(Span::raw(format!("  in flight {:.0}", v.in_flight)));
    }
    spans.push(Span::raw(format!(
        "  every {}   q quit",
        humantime::format_duration(args.interval)
    )));
    Line::from(spans)
}

fn scrape_state(args: &TopArgs, model: &Model) -> Line<'static> {
    let ago = model.last_ok().map(|t| t.elapsed().as_secs());
    match (model.error(), ago) {
        (Some(e), Some(ago)) => Line::styled(
            format!("admin endpoint unreachable ({ago} s since the last scrape), retrying: {e}"),
            Style::new().fg(Color::Red),
        ),
        _ => Line::raw(format!(
            "scraped {} (rates: change since the previous scrape)",
            args.admin
        )),
    }
}

fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
}

fn rate(c: Count) -> String {
    c.per_sec
        .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"))
}

fn boxed(title: &str) -> Block<'static> {
    Block::bordered().title(title.to_owned())
}

fn bold_row<const N: usize>(cells: [&'static str; N]) -> TableRow<'static> {
    TableRow::new(cells).style(Style::new().add_modifier(Modifier::BOLD))
}

/// Sinks (`with_sink` false) or routes with their sink: delivered and retried, totals and rates.
fn flow_table<'a>(title: &str, first: &'static str, with_sink: bool, rows: &[Row]) -> Table<'a> {
    let lines = rows.iter().map(|r| {
        let mut cells = vec![r.name.clone()];
        if with_sink {
            cells.push(r.sink.clone().unwrap_or_default());
        }
        cells.extend([
            format!("{:.0}", r.events.total),
            rate(r.events),
            format!("{:.0}", r.retries.total),
            rate(r.retries),
        ]);
        if !with_sink {
            cells.push(p99(r));
        }
        TableRow::new(cells)
    });
    let (header, widths) = if with_sink {
        (
            bold_row([
                first,
                "SINK",
                "DELIVERED",
                "EVENTS/S",
                "RETRIES",
                "RETRIES/S",
            ]),
            vec![
                Constraint::Fill(2),
                Constraint::Fill(1),
                Constraint::Length(14),
                Constraint::Length(12),
                Constraint::Length(10),
                Constraint::Length(10),
            ],
        )
    } else {
        (
            bold_row([
                first,
                "DELIVERED",
                "EVENTS/S",
                "RETRIES",
                "RETRIES/S",
                "P99 MS",
            ]),
            vec![
                Constraint::Fill(3),
                Constraint::Length(14),
                Constraint::Length(12),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(10),
            ],
        )
    };
    Table::new(lines, widths).header(header).block(boxed(title))
}

/// A row's p99 over the last minute (exact, from the bridge's rolling window), or `–`.
fn p99(r: &Row) -> String {
    match r.p99_ms {
        Some(ms) if ms >= 100.0 => format!("{ms:.0}"),
        Some(ms) => format!("{ms:.2}"),
        None => "–".into(),
    }
}

fn sources_table(view: &View) -> Table<'static> {
    let rows = view.sources.iter().map(|r| {
        TableRow::new([
            r.name.clone(),
            format!("{:.0}", r.events.total),
            rate(r.events),
            p99(r),
        ])
    });
    Table::new(
        rows,
        [
            Constraint::Fill(1),
            Constraint::Length(12),
            Constraint::Length(10),
            Constraint::Length(12),
        ],
    )
    .header(bold_row(["SOURCE", "RECEIVED", "EVENTS/S", "ACK P99 MS"]))
    .block(boxed("Sources"))
}

fn streams_table(view: &View) -> Table<'static> {
    let rows = view.streams.iter().map(|s| {
        let (state, color) = if s.connected {
            ("connected", Color::Green)
        } else {
            ("disconnected", Color::Red)
        };
        TableRow::new([
            Cell::from(s.client_id.clone()),
            Cell::from(Span::styled(state, Style::new().fg(color))),
            Cell::from(format!("{:.0}", s.reconnects)),
            Cell::from(format!("{:.1}", s.gap_seconds)),
        ])
    });
    let widths = [
        Constraint::Length(38),
        Constraint::Length(13),
        Constraint::Length(11),
        Constraint::Fill(1),
    ];
    Table::new(rows, widths)
        .header(bold_row([
            "CLIENT ID",
            "STATE",
            "RECONNECTS",
            "GAP SECONDS",
        ]))
        .block(boxed("WebSocket streams"))
}

fn dead_letters(view: &View) -> Paragraph<'static> {
    let mut lines = vec![Line::raw(format!(
        "total {:.0}   {}/s",
        view.dead_letters.total,
        rate(view.dead_letters)
    ))];
    lines.extend(
        view.dead_letter_reasons
            .iter()
            .map(|(reason, n)| Line::raw(format!("  {reason:<12} {n:.0}"))),
    );
    if view.dead_letter_failures > 0.0 {
        lines.push(Line::styled(
            format!("written nowhere {:.0}", view.dead_letter_failures),
            Style::new().fg(Color::Red),
        ));
    }
    Paragraph::new(lines).block(boxed("Dead letters"))
}

fn spool_box(view: &View) -> Paragraph<'static> {
    const MIB: f64 = 1024.0 * 1024.0;
    let lines = match view.spool {
        None => vec![Line::raw("no spool")],
        Some(s) => {
            let mut lines = vec![
                Line::raw(format!("events   {:.0}", s.events)),
                Line::raw(format!("on disk  {:.1} MiB", s.bytes / MIB)),
            ];
            if let (Some(max), Some(pct)) = (s.max_bytes, s.percent()) {
                lines.push(Line::raw(format!(
                    "of max   {:.0} MiB ({pct:.1}% used)",
                    max / MIB
                )));
            }
            lines
        }
    };
    Paragraph::new(lines).block(boxed("Spool"))
}

fn readiness_box(view: &View) -> Paragraph<'static> {
    let lines: Vec<Line<'static>> = match &view.readiness {
        None => vec![Line::raw("/readyz did not answer")],
        Some(r) => r.lines.iter().map(|l| Line::raw(l.clone())).collect(),
    };
    Paragraph::new(lines).block(boxed("Readiness (/readyz)"))
}
