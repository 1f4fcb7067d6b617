//! Reading the status page's rendered DOM as a person reads it: each `<h2>` section with the
//! text of its table rows, cell by cell, so assertions name a row's contents rather than
//! its markup. The page is plain HTML without nesting inside cells, which is all this reads.

/// One `<h2>` section: its heading text and the rows of the table under it (header row
/// included), each as the text of its cells.
#[derive(Debug)]
pub struct Section {
    pub heading: String,
    pub rows: Vec<Vec<String>>,
}

/// The text inside the first `<tag …>…</tag>` of `html` and what follows it.
fn element<'a>(html: &'a str, tag: &str) -> Option<(&'a str, &'a str)> {
    let open = html.find(&format!("<{tag}"))?;
    let content_start = open + html[open..].find('>')? + 1;
    let close = content_start + html[content_start..].find(&format!("</{tag}>"))?;
    Some((&html[content_start..close], &html[close + tag.len() + 3..]))
}

/// Text with tags removed and the entities the page escapes restored.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
        .trim()
        .to_string()
}

fn cells(row: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = row;
    loop {
        let next_td = rest.find("<td");
        let next_th = rest.find("<th");
        let tag = match (next_td, next_th) {
            (Some(td), Some(th)) if th < td => "th",
            (Some(_), _) => "td",
            (None, Some(_)) => "th",
            (None, None) => return out,
        };
        let Some((content, after)) = element(rest, tag) else {
            return out;
        };
        out.push(text(content));
        rest = after;
    }
}

/// The sections of a rendered page, in order.
pub fn sections(dom: &str) -> Vec<Section> {
    let mut found = Vec::new();
    let mut rest = dom;
    while let Some((heading, after)) = element(rest, "h2") {
        let body = after.split("<h2").next().unwrap_or_default();
        let mut rows = Vec::new();
        let mut body_rest = body;
        while let Some((row, row_after)) = element(body_rest, "tr") {
            rows.push(cells(row));
            body_rest = row_after;
        }
        found.push(Section {
            heading: text(heading),
            rows,
        });
        rest = after;
    }
    found
}

/// The section whose heading starts with `prefix`; panics with the page when there is none.
pub fn section<'a>(sections: &'a [Section], prefix: &str, dom: &str) -> &'a Section {
    sections
        .iter()
        .find(|s| s.heading.starts_with(prefix))
        .unwrap_or_else(|| panic!("no section headed {prefix:?} on the page:\n{dom}"))
}
