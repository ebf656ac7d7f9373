//! The modules of `src/` form layers: a module may use its own layer and those below it,
//! never one above, and the graph of modules has no cycle. `src/lib.rs` (Layout) and
//! `docs/architecture.md` describe the same layers.
//!
//! Every file under `src/` (except `main.rs`, `lib.rs` and `bin/`, which sit on top) is
//! read as text: each `crate::…` path (in `use` lines, groups such as
//! `use crate::{a::{b, c}, d}` included, and inline paths) and each `super::…` path that
//! climbs out of its top-level module counts as an import of that module. Comments and
//! string literals are skipped, so doc links do not count.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The layers, bottom first. A submodule (`cluster::presence`, `handlers::documents`)
/// belongs to its top-level module.
const LAYERS: &[&[&str]] = &[
    // Foundation: types and tables that know nothing of the rest.
    &["error", "time", "sanitize", "events", "metrics", "config"],
    // Who a user is, room names and their access rule, limits.
    &["rooms", "auth", "access", "limits"],
    // Durable and shared state.
    &["store", "cluster"],
    // The shared state of one server, built once.
    &["app"],
    // What one socket holds.
    &["session"],
    // Client events.
    &["handlers"],
    // A socket's life, the HTTP surface, the admin dashboard.
    &["connection", "http", "admin"],
    // Wiring.
    &["server"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// One import found in a file.
#[derive(Debug, Clone)]
struct Import {
    file: PathBuf,
    line: usize,
    path: String,
    target: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Colons,
    Open(char),
    Close(char),
    Other(char),
}

/// Rust source as tokens with their lines, without comments, strings and char literals.
fn tokens(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    let count_lines = |from: usize, to: usize| c[from..to].iter().filter(|&&ch| ch == '\n').count();
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            let (start, mut depth) = (i, 0);
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            line += count_lines(start, i);
        } else if ch == 'r' && (c.get(i + 1) == Some(&'"') || c.get(i + 1) == Some(&'#')) && {
            let mut j = i + 1;
            while c.get(j) == Some(&'#') {
                j += 1;
            }
            c.get(j) == Some(&'"')
        } {
            // A raw string: r"…" or r#"…"#.
            let start = i;
            let mut hashes = 0;
            i += 1;
            while c[i] == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1;
            loop {
                if i >= c.len() {
                    break;
                }
                if c[i] == '"' && (0..hashes).all(|k| c.get(i + 1 + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            line += count_lines(start, i.min(c.len()));
        } else if ch == '"' {
            let start = i;
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            line += count_lines(start, i.min(c.len()));
        } else if ch == '\'' {
            // A char literal ('a', '\n', '\u{..}') or a lifetime ('a).
            if c.get(i + 1) == Some(&'\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_alphanumeric() || ch == '_' || ch == '$' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '$') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            out.push((Tok::Ident(word.trim_start_matches('$').to_owned()), line));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::Colons, line));
            i += 2;
        } else if matches!(ch, '{' | '(' | '[') {
            out.push((Tok::Open(ch), line));
            i += 1;
        } else if matches!(ch, '}' | ')' | ']') {
            out.push((Tok::Close(ch), line));
            i += 1;
        } else {
            out.push((Tok::Other(ch), line));
            i += 1;
        }
    }
    out
}

/// The module path of a file under `src/`: `src/a/b.rs` is `[a, b]`, `src/a/mod.rs` `[a]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The first names a `use` tree starting at `toks[i]` (just after `crate::`) reaches:
/// `a::b` gives `a`, `{a::{b, c}, d}` gives `a` and `d`.
fn group_heads(toks: &[(Tok, usize)], i: usize) -> Vec<(String, usize)> {
    match toks.get(i) {
        Some((Tok::Ident(name), line)) => vec![(name.clone(), *line)],
        Some((Tok::Open('{'), _)) => {
            let (mut out, mut depth, mut j, mut expect_head) = (Vec::new(), 0, i, true);
            while j < toks.len() {
                match &toks[j].0 {
                    Tok::Open(_) => {
                        depth += 1;
                        expect_head = depth == 1;
                    }
                    Tok::Close(_) => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Tok::Other(',') if depth == 1 => expect_head = true,
                    Tok::Ident(name) if expect_head && depth == 1 => {
                        out.push((name.clone(), toks[j].1));
                        expect_head = false;
                    }
                    _ => expect_head = false,
                }
                j += 1;
            }
            out
        }
        _ => Vec::new(),
    }
}

/// The imports of one file: the top-level modules its `crate::` and `super::` paths name.
fn imports(file: &Path, rel: &Path) -> Vec<Import> {
    let src = fs::read_to_string(file).unwrap();
    let toks = tokens(&src);
    let base = module_path(rel);
    let mut out = Vec::new();
    // Inline modules (`mod tests {`) open at these brace depths; `super::` climbs them first.
    let (mut depth, mut inline): (usize, Vec<usize>) = (0, Vec::new());
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Open('{') => depth += 1,
            Tok::Close('}') => {
                if inline.last() == Some(&depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(m)
                if m == "mod"
                    && matches!(toks.get(i + 1), Some((Tok::Ident(_), _)))
                    && matches!(toks.get(i + 2), Some((Tok::Open('{'), _))) =>
            {
                inline.push(depth + 1);
            }
            Tok::Ident(root)
                if (root == "crate" || root == "super")
                    && toks.get(i + 1).map(|t| &t.0) == Some(&Tok::Colons)
                    && !(i > 0 && toks[i - 1].0 == Tok::Colons) =>
            {
                let mut j = i;
                let mut path = base.clone();
                let mut in_file = inline.len();
                if root == "crate" {
                    path.clear();
                    j += 2;
                } else {
                    while let (Some((Tok::Ident(s), _)), Some((Tok::Colons, _))) =
                        (toks.get(j), toks.get(j + 1))
                    {
                        if s != "super" {
                            break;
                        }
                        if in_file > 0 {
                            in_file -= 1;
                        } else {
                            path.pop();
                        }
                        j += 2;
                    }
                }
                let heads = match path.first() {
                    // Still inside a top-level module: the path names that module.
                    Some(top) => vec![(top.clone(), toks[i].1)],
                    None => group_heads(&toks, j),
                };
                for (target, line) in heads {
                    out.push(Import {
                        file: file.to_owned(),
                        line,
                        path: format!("{root}::…::{target}").replace("crate::…::", "crate::"),
                        target,
                    });
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every import between two different top-level modules, with the module of its file.
fn module_imports(src: &Path) -> (Vec<(String, Import)>, Vec<String>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let (mut edges, mut unknown) = (Vec::new(), Vec::new());
    for file in files {
        let rel = file.strip_prefix(src).unwrap().to_owned();
        let top = rel.iter().next().unwrap().to_string_lossy().into_owned();
        if top == "bin" || top == "main.rs" || top == "lib.rs" {
            continue;
        }
        let module = top.trim_end_matches(".rs").to_owned();
        if layer_of(&module).is_none() {
            unknown.push(format!("{} (module `{module}`)", rel.display()));
            continue;
        }
        for mut import in imports(&file, &rel) {
            import.file = Path::new("src").join(&rel);
            if import.target != module {
                edges.push((module.clone(), import));
            }
        }
    }
    (edges, unknown)
}

/// The problems with a set of imports: an import of a higher layer or of a module in no
/// layer, and cycles among modules of one layer.
fn problems(edges: &[(String, Import)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (from, import) in edges {
        let at = |l: usize| import.file.display().to_string() + &format!(":{l}");
        match (layer_of(from), layer_of(&import.target)) {
            (Some(a), Some(b)) if b > a => out.push(format!(
                "{}: `{from}` (layer {}) imports `{}` (layer {}) via `{}`",
                at(import.line),
                a + 1,
                import.target,
                b + 1,
                import.path
            )),
            (_, None) => out.push(format!(
                "{}: `{from}` imports `{}`, which is in no layer of tests/layers.rs",
                at(import.line),
                import.target
            )),
            _ => {}
        }
        graph
            .entry(from.as_str())
            .or_default()
            .insert(import.target.as_str());
    }
    // Cycles: a depth-first search that finds a module already on its path.
    fn visit<'a>(
        m: &'a str,
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        out: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|p| *p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m);
            out.push(format!("cycle: {}", cycle.join(" -> ")));
            return;
        }
        if !done.insert(m) {
            return;
        }
        path.push(m);
        for next in graph.get(m).into_iter().flatten() {
            visit(next, graph, path, done, out);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done, &mut out);
    }
    out
}

#[test]
fn no_module_imports_a_higher_layer_or_forms_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (edges, unknown) = module_imports(&src);
    assert!(
        unknown.is_empty(),
        "files of modules in no layer (add them to LAYERS in tests/layers.rs and to the \
         Layout of src/lib.rs):\n{}",
        unknown.join("\n")
    );
    let found = problems(&edges);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn lib_rs_lists_the_same_layers() {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let heading = |n: usize| format!("//! {n}. ");
    for (n, layer) in LAYERS.iter().enumerate() {
        let start = lib
            .find(&heading(n + 1))
            .unwrap_or_else(|| panic!("src/lib.rs's Layout has no line `{}…`", heading(n + 1)));
        let end = lib[start..]
            .find(&heading(n + 2))
            .or_else(|| lib[start..].find("\n\n"))
            .map_or(lib.len(), |e| start + e);
        for module in *layer {
            assert!(
                lib[start..end].contains(&format!("[`{module}`]")),
                "src/lib.rs's Layout does not name [`{module}`] under layer {}",
                n + 1
            );
            assert!(
                lib.contains(&format!("pub mod {module};")),
                "src/lib.rs has no `pub mod {module};`"
            );
        }
    }
}

/// The check itself can fail: a lower layer importing a higher one, a group import, a
/// `super::` that leaves its module, and a cycle within a layer are all found.
#[test]
fn the_check_finds_upward_imports_groups_and_cycles() {
    let dir = std::env::temp_dir().join(format!("trestle-layers-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("handlers")).unwrap();
    fs::write(
        dir.join("config.rs"),
        "//! [`crate::server`] in a doc link does not count.\n\
         use crate::{error::{AppError, Code}, store::Objects};\n\
         const S: &str = \"crate::server::x\";\n\
         mod tests { use super::*; fn f() { super::super::app::x(); } }\n",
    )
    .unwrap();
    fs::write(dir.join("rooms.rs"), "use crate::auth::User;\n").unwrap();
    fs::write(
        dir.join("auth.rs"),
        "fn f() -> crate::rooms::Id { todo!() }\n",
    )
    .unwrap();
    fs::write(
        dir.join("handlers/mod.rs"),
        "use crate::session::Conn; use super::events; mod x;\n",
    )
    .unwrap();
    let (edges, unknown) = module_imports(&dir);
    assert!(unknown.is_empty(), "{unknown:?}");
    let found = problems(&edges).join("\n");
    let _ = fs::remove_dir_all(&dir);
    assert!(
        found.contains("config.rs:2: `config` (layer 1) imports `store`"),
        "{found}"
    );
    assert!(
        found.contains("config.rs:4: `config` (layer 1) imports `app`"),
        "{found}"
    );
    assert!(!found.contains("server"), "{found}");
    assert!(!found.contains("`error`"), "{found}");
    assert!(found.contains("cycle: auth -> rooms -> auth"), "{found}");
    assert!(!found.contains("handlers"), "{found}");
}
