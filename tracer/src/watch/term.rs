//! The terminal edge: raw mode and the alternate screen, restored on every
//! way out (normal exit, error, panic: a panic hook restores first); a
//! painter thread that writes frames, so that a slow terminal (ssh, a
//! paused tmux) never stalls the event loop; a reader thread that turns
//! key presses and resizes into a channel.

use std::{
    io::{self, Stdout},
    sync::{
        Arc, Once,
        atomic::{AtomicBool, Ordering},
        mpsc as std_mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use ratatui::{
    Terminal,
    backend::CrosstermBackend,
    buffer::Buffer,
    crossterm::{
        cursor, event, execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
};
use tokio::sync::mpsc;

/// True while the terminal is in raw mode on the alternate screen.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Leaves raw mode and the alternate screen, shows the cursor. Safe to
/// call more than once and from a panic hook: only the first call acts.
pub fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = terminal::disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
    }
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // The message must land on the normal screen, readable.
            restore();
            previous(info);
        }));
    });
}

/// The terminal while `watch` runs. Dropping it restores the terminal.
pub struct Screen {
    frames: Option<std_mpsc::SyncSender<Buffer>>,
    painter: Option<JoinHandle<io::Result<()>>>,
    stop_reader: Arc<AtomicBool>,
    reader: Option<JoinHandle<io::Result<()>>>,
    /// Standard input was a terminal at the start: its hangup is watched.
    tty_stdin: bool,
    /// Key presses, resizes (and mouse events, unused) from the terminal.
    pub events: mpsc::Receiver<event::Event>,
}

impl Screen {
    /// Enters raw mode and the alternate screen, and starts the painter
    /// and the key reader.
    pub fn enter() -> io::Result<Self> {
        install_panic_hook();
        terminal::enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        let mut screen = Self {
            frames: None,
            painter: None,
            stop_reader: Arc::new(AtomicBool::new(false)),
            reader: None,
            // SAFETY: isatty(3) only asks about the descriptor.
            tty_stdin: unsafe { libc::isatty(libc::STDIN_FILENO) } == 1,
            events: mpsc::channel(1).1,
        };
        // From here on, an error drops `screen`, which restores.
        // Cleared here rather than by `Terminal::clear`, which first asks
        // the terminal where its cursor is: a terminal that never answers
        // (a bare pty, some serial consoles) would fail the start.
        execute!(
            io::stdout(),
            EnterAlternateScreen,
            cursor::Hide,
            terminal::Clear(terminal::ClearType::All)
        )?;
        let term = Terminal::new(CrosstermBackend::new(io::stdout()))?;
        // One frame in flight: if the terminal is slower than the tick,
        // frames are skipped rather than queued.
        let (tx, rx) = std_mpsc::sync_channel::<Buffer>(1);
        screen.frames = Some(tx);
        screen.painter = Some(
            std::thread::Builder::new()
                .name("watch-painter".into())
                .spawn(move || paint(term, &rx))?,
        );
        let (etx, erx) = mpsc::channel(256);
        screen.events = erx;
        let stop = Arc::clone(&screen.stop_reader);
        let tty_stdin = screen.tty_stdin;
        screen.reader = Some(
            std::thread::Builder::new()
                .name("watch-keys".into())
                .spawn(move || read_events(&stop, &etx, tty_stdin))?,
        );
        Ok(screen)
    }

    /// True once the terminal has hung up (see [`hung_up`]): standard
    /// output, which watch requires to be a terminal, or standard input
    /// when it is one. Asked by the loop on every frame: the key reader
    /// may be caught in the terminal library by then, polling a
    /// descriptor that is always ready.
    pub fn hung_up(&self) -> bool {
        hung_up(libc::STDOUT_FILENO) || (self.tty_stdin && hung_up(libc::STDIN_FILENO))
    }

    /// Why the key reader stopped, if it stopped on an error. Asked once
    /// its channel has closed: it holds the only sender, so it has
    /// returned, and joining it takes no time.
    pub fn reader_error(&mut self) -> Option<io::Error> {
        match self.reader.take()?.join() {
            Ok(res) => res.err(),
            Err(_) => Some(io::Error::other("the key reader panicked")),
        }
    }

    /// The terminal's size now (columns, rows).
    pub fn size() -> io::Result<(u16, u16)> {
        terminal::size()
    }

    /// Hands a finished frame to the painter; dropped if it is still busy
    /// with the previous one. An error means the painter died.
    pub fn show(&self, frame: Buffer) -> io::Result<()> {
        match self.frames.as_ref().map(|f| f.try_send(frame)) {
            Some(Ok(()) | Err(std_mpsc::TrySendError::Full(_))) => Ok(()),
            _ => Err(io::Error::other("the terminal painter stopped")),
        }
    }

    /// Stops both threads and restores the terminal; returns the
    /// painter's error, if it had one.
    pub fn leave(mut self) -> io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> io::Result<()> {
        self.frames = None;
        let painted = match self.painter.take().map(JoinHandle::join) {
            Some(Ok(res)) => res,
            Some(Err(_)) => Err(io::Error::other("the terminal painter panicked")),
            None => Ok(()),
        };
        self.stop_reader.store(true, Ordering::SeqCst);
        restore();
        // The reader notices within its poll's 50 ms; one still running
        // after READER_GRACE (or at once, when the terminal hung up and it
        // spins in the terminal library) is left to end with the process.
        let gone = self.hung_up();
        if let Some(r) = self.reader.take() {
            let deadline =
                std::time::Instant::now() + if gone { Duration::ZERO } else { READER_GRACE };
            while !r.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if r.is_finished() {
                let _ = r.join();
            }
        }
        painted
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn paint(
    mut term: Terminal<CrosstermBackend<Stdout>>,
    frames: &std_mpsc::Receiver<Buffer>,
) -> io::Result<()> {
    while let Ok(buf) = frames.recv() {
        if !ACTIVE.load(Ordering::SeqCst) {
            break;
        }
        term.draw(|f| {
            // A frame made for the size before a resize is skipped; the
            // next tick brings one of the right size.
            if f.area() == buf.area {
                *f.buffer_mut() = buf;
            }
        })?;
    }
    Ok(())
}

/// How long leaving waits for the key reader to stop.
const READER_GRACE: Duration = Duration::from_millis(500);

/// True once the terminal on `fd` has hung up (its window closed, its
/// ssh connection or tmux server gone): a hung-up terminal polls readable
/// for ever and reading it yields no key, so the terminal library's wait
/// for a key spins. `fd` must be a terminal, or have been one at the
/// start.
fn hung_up(fd: libc::c_int) -> bool {
    let mut fd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&raw mut fd, 1, 0) };
    n == 1 && fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// Sends the terminal's events until told to stop, the loop stops
/// listening, the terminal is gone (seen between two waits: a hangup
/// during one leaves the library spinning, which [`Screen::hung_up`]
/// catches from the loop) or reading fails: then the channel closes,
/// which ends `watch`, since no one could quit it.
fn read_events(
    stop: &AtomicBool,
    tx: &mpsc::Sender<event::Event>,
    tty_stdin: bool,
) -> io::Result<()> {
    while !stop.load(Ordering::SeqCst) {
        if tty_stdin && hung_up(libc::STDIN_FILENO) {
            break;
        }
        if event::poll(Duration::from_millis(50))? && tx.blocking_send(event::read()?).is_err() {
            break;
        }
    }
    Ok(())
}
