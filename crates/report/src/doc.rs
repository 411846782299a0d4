//! One document, two renderings. The report is built once as a list of blocks; Markdown and
//! HTML are both written from that list, so the two always hold the same content.

use std::fmt::Write as _;

/// A chart: written as `charts/<file>.svg` beside the Markdown, inlined in the HTML.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    pub file: String,
    pub title: String,
    pub svg: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Block {
    Heading(u8, String),
    /// Text with `**bold**` and `` `code` `` spans.
    Para(String),
    List(Vec<String>),
    Table {
        head: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    Code(String),
    /// A quoted answer, shown verbatim.
    Quote(String),
    Chart(Chart),
    Rule,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Doc {
    pub title: String,
    pub blocks: Vec<Block>,
}

impl Doc {
    pub fn h2(&mut self, s: impl Into<String>) {
        self.blocks.push(Block::Heading(2, s.into()));
    }
    pub fn h3(&mut self, s: impl Into<String>) {
        self.blocks.push(Block::Heading(3, s.into()));
    }
    pub fn p(&mut self, s: impl Into<String>) {
        self.blocks.push(Block::Para(s.into()));
    }
    pub fn list(&mut self, items: Vec<String>) {
        if !items.is_empty() {
            self.blocks.push(Block::List(items));
        }
    }
    pub fn table(&mut self, head: &[&str], rows: Vec<Vec<String>>) {
        self.blocks.push(Block::Table {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows,
        });
    }
    pub fn charts(&self) -> impl Iterator<Item = &Chart> {
        self.blocks.iter().filter_map(|b| match b {
            Block::Chart(c) => Some(c),
            _ => None,
        })
    }

    pub fn markdown(&self) -> String {
        let mut s = format!("# {}\n", self.title);
        for b in &self.blocks {
            s.push('\n');
            match b {
                Block::Heading(l, t) => {
                    let _ = writeln!(s, "{} {t}", "#".repeat(*l as usize));
                }
                Block::Para(t) => {
                    let _ = writeln!(s, "{t}");
                }
                Block::List(items) => {
                    for i in items {
                        let _ = writeln!(s, "- {i}");
                    }
                }
                Block::Table { head, rows } => {
                    let _ = writeln!(s, "| {} |", head.join(" | "));
                    let _ = writeln!(s, "|{}", "---|".repeat(head.len()));
                    for r in rows {
                        let cells: Vec<String> = r.iter().map(|c| md_cell(c)).collect();
                        let _ = writeln!(s, "| {} |", cells.join(" | "));
                    }
                }
                Block::Code(t) => {
                    let _ = writeln!(s, "```\n{}\n```", t.trim_end());
                }
                Block::Quote(t) => {
                    // A fence rather than `>` keeps model output (which may hold Markdown)
                    // from being rendered as report structure.
                    let fence = if t.contains("```") { "~~~~" } else { "```" };
                    let _ = writeln!(s, "{fence}text\n{}\n{fence}", t.trim_end());
                }
                Block::Chart(c) => {
                    let _ = writeln!(s, "![{}](charts/{}.svg)", c.title, c.file);
                }
                Block::Rule => s.push_str("---\n"),
            }
        }
        s
    }

    /// A self-contained page: inline CSS, inline SVG, no scripts, no external requests.
    pub fn html(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n<h1>{}</h1>\n",
            esc(&self.title),
            esc(&self.title)
        );
        for b in &self.blocks {
            match b {
                Block::Heading(l, t) => {
                    let id = slug(t);
                    let _ = writeln!(s, "<h{l} id=\"{id}\">{}</h{l}>", esc(t));
                }
                Block::Para(t) => {
                    let _ = writeln!(s, "<p>{}</p>", inline(t));
                }
                Block::List(items) => {
                    s.push_str("<ul>\n");
                    for i in items {
                        let _ = writeln!(s, "<li>{}</li>", inline(i));
                    }
                    s.push_str("</ul>\n");
                }
                Block::Table { head, rows } => {
                    s.push_str("<div class=\"tw\"><table>\n<thead><tr>");
                    for h in head {
                        let _ = write!(s, "<th>{}</th>", inline(h));
                    }
                    s.push_str("</tr></thead>\n<tbody>\n");
                    for r in rows {
                        s.push_str("<tr>");
                        for c in r {
                            let _ = write!(s, "<td>{}</td>", inline(c));
                        }
                        s.push_str("</tr>\n");
                    }
                    s.push_str("</tbody></table></div>\n");
                }
                Block::Code(t) => {
                    let _ = writeln!(s, "<pre><code>{}</code></pre>", esc(t.trim_end()));
                }
                Block::Quote(t) => {
                    let _ = writeln!(s, "<pre class=\"answer\">{}</pre>", esc(t.trim_end()));
                }
                Block::Chart(c) => {
                    let _ = writeln!(
                        s,
                        "<figure class=\"chart\" data-chart=\"{}\">{}<figcaption>{}</figcaption></figure>",
                        esc(&c.file),
                        strip_xml_decl(&c.svg),
                        esc(&c.title)
                    );
                }
                Block::Rule => s.push_str("<hr>\n"),
            }
        }
        s.push_str("</main>\n</body>\n</html>\n");
        s
    }
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#fafafa;color:#1a1a1a;line-height:1.45}\
main{max-width:1100px;margin:0 auto;padding:1.5rem 2rem;background:#fff}\
h1{font-size:1.7rem;border-bottom:2px solid #333;padding-bottom:.3rem}h2{margin-top:2rem;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem}th,td{border:1px solid #d0d0d0;padding:.25rem .5rem;text-align:left;vertical-align:top}\
th{background:#f0f0f0}.tw{overflow-x:auto}code{background:#f3f3f3;padding:0 .2rem;border-radius:3px}\
pre{background:#f6f6f6;padding:.6rem;overflow-x:auto;white-space:pre-wrap;font-size:.85rem}pre.answer{border-left:3px solid #888}\
figure.chart{margin:1rem 0}figure.chart svg{max-width:100%;height:auto;border:1px solid #e0e0e0}figcaption{font-size:.85rem;color:#555}";

/// Markdown table cells cannot hold raw pipes or line breaks.
fn md_cell(c: &str) -> String {
    c.replace('|', "\\|").replace('\n', " ")
}

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// `**bold**` and `` `code` `` spans, the only inline Markdown the report writes; a backslash
/// before a pipe is Markdown table escaping and is dropped.
fn inline(s: &str) -> String {
    let mut out = String::new();
    let mut bold = false;
    let mut code = false;
    let mut rest = s;
    while !rest.is_empty() {
        if !code && rest.starts_with("**") {
            out.push_str(if bold { "</strong>" } else { "<strong>" });
            bold = !bold;
            rest = &rest[2..];
        } else if rest.starts_with('`') {
            out.push_str(if code { "</code>" } else { "<code>" });
            code = !code;
            rest = &rest[1..];
        } else {
            let ch = rest.chars().next().unwrap_or(' ');
            out.push_str(&esc(&ch.to_string()));
            rest = &rest[ch.len_utf8()..];
        }
    }
    if code {
        out.push_str("</code>");
    }
    if bold {
        out.push_str("</strong>");
    }
    out
}

fn strip_xml_decl(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}

fn slug(t: &str) -> String {
    let s: String = t
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_and_inlines() {
        assert_eq!(
            inline("a **b** `<c>`"),
            "a <strong>b</strong> <code>&lt;c&gt;</code>"
        );
        let d = Doc {
            title: "T <x>".into(),
            blocks: vec![Block::Quote("<script>alert(1)</script>".into())],
        };
        let h = d.html();
        assert!(h.contains("&lt;script&gt;") && !h.contains("<script>"));
        assert!(d.markdown().contains("```text\n<script>"));
    }

    #[test]
    fn markdown_tables_escape_pipes() {
        let mut d = Doc::default();
        d.table(&["a", "b"], vec![vec!["x|y".into(), "z\nw".into()]]);
        assert!(d.markdown().contains("| x\\|y | z w |"));
    }
}
