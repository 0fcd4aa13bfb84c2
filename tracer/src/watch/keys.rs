//! Keys to state changes: pure, so that tests press keys without a terminal.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::app::{App, Pane};

/// Rows a page key moves.
const PAGE: isize = 10;

/// Applies one key press to the screen state.
pub fn handle(app: &mut App, key: KeyEvent) {
    if key.kind == KeyEventKind::Release {
        return;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && matches!(key.code, KeyCode::Char('c' | 'C')) {
        app.quit = true;
        return;
    }
    if app.editing {
        edit_filter(app, key.code);
        return;
    }
    if app.help {
        // Any key closes the help; `q` still quits.
        app.help = false;
        if key.code == KeyCode::Char('q') {
            app.quit = true;
        }
        return;
    }
    match key.code {
        KeyCode::Char('q') => app.quit = true,
        KeyCode::Char('?') | KeyCode::F(1) => app.help = true,
        KeyCode::Down | KeyCode::Char('j') => app.move_by(1),
        KeyCode::Up | KeyCode::Char('k') => app.move_by(-1),
        KeyCode::PageDown => app.move_by(PAGE),
        KeyCode::PageUp => app.move_by(-PAGE),
        KeyCode::Home | KeyCode::Char('g') => app.jump(false),
        KeyCode::End | KeyCode::Char('G') => app.jump(true),
        KeyCode::Enter => {
            app.pane = match app.pane {
                Pane::Table => Pane::Detail,
                Pane::Detail => Pane::Table,
            };
        }
        KeyCode::Esc if app.pane == Pane::Detail => app.pane = Pane::Table,
        KeyCode::Esc if !app.filter.is_empty() => {
            app.filter.clear();
            app.invalidate();
        }
        KeyCode::Char('/') => app.editing = true,
        KeyCode::Char('s') => app.cycle_sort(false),
        KeyCode::Char('S') => app.cycle_sort(true),
        KeyCode::Char('r') => app.reverse_sort(),
        KeyCode::Char(' ') | KeyCode::Char('p') => app.toggle_pause(),
        _ => {}
    }
}

/// While typing the filter: text goes in, Enter keeps it, Esc drops it.
/// The table follows every key.
fn edit_filter(app: &mut App, code: KeyCode) {
    match code {
        KeyCode::Enter => app.editing = false,
        KeyCode::Esc => {
            app.editing = false;
            app.filter.clear();
        }
        KeyCode::Backspace => {
            app.filter.pop();
        }
        KeyCode::Char(c) if !c.is_control() => app.filter.push(c),
        _ => return,
    }
    app.invalidate();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::row::Column;

    fn press(app: &mut App, code: KeyCode) {
        handle(app, KeyEvent::new(code, KeyModifiers::NONE));
    }

    #[test]
    fn quit_help_sort_pause_filter() {
        let mut app = App::new();
        press(&mut app, KeyCode::Char('?'));
        assert!(app.help);
        press(&mut app, KeyCode::Char('x'));
        assert!(!app.help && !app.quit, "any key closes the help");
        press(&mut app, KeyCode::Char('s'));
        assert_eq!((app.sort, app.descending), (Column::Src, false));
        press(&mut app, KeyCode::Char('r'));
        assert!(app.descending);
        press(&mut app, KeyCode::Char(' '));
        assert!(app.paused);
        press(&mut app, KeyCode::Char('/'));
        for c in "pod-1 q".chars() {
            press(&mut app, KeyCode::Char(c));
        }
        assert!(!app.quit, "q while typing is text");
        press(&mut app, KeyCode::Backspace);
        press(&mut app, KeyCode::Enter);
        assert_eq!((app.filter.as_str(), app.editing), ("pod-1 ", false));
        press(&mut app, KeyCode::Esc);
        assert!(app.filter.is_empty());
        press(&mut app, KeyCode::Enter);
        assert_eq!(app.pane, Pane::Detail);
        press(&mut app, KeyCode::Esc);
        assert_eq!(app.pane, Pane::Table);
        handle(
            &mut app,
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
        );
        assert!(app.quit);
    }
}
