//! Server-rendered SVG charts: horizontal bars, stacked by series, readable without
//! JavaScript and by screen readers (a `<title>` and a `<desc>` listing every figure, a text
//! label on each bar, a `<title>` on each segment, a legend in words).
//!
//! Values are integers (money in micro-units); geometry is computed in integers too, so the
//! same data always draws the same picture.

use std::fmt::Write;

/// One stacked part of every bar (e.g. one provider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub name: String,
    /// One value per category; negative values draw as nothing.
    pub values: Vec<i64>,
}

/// A line drawn across each bar at a value (e.g. a team's budget).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub name: String,
    pub values: Vec<Option<i64>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chart {
    /// Unique on the page: it prefixes the ids `aria-labelledby` points at.
    pub id: String,
    pub title: String,
    pub categories: Vec<String>,
    pub series: Vec<Series>,
    pub limit: Option<Limit>,
}

/// Colour-blind-safe (Okabe-Ito), in legend order.
const PALETTE: [&str; 8] = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#555555"];

const WIDTH: i64 = 760;
const LABEL_WIDTH: i64 = 170;
const VALUE_WIDTH: i64 = 120;
const BAR_AREA: i64 = WIDTH - LABEL_WIDTH - VALUE_WIDTH;
const ROW: i64 = 30;
const BAR: i64 = 20;
const TITLE_HEIGHT: i64 = 28;
const LEGEND_ROW: i64 = 22;
const LEGEND_GAP: i64 = 18;

impl Chart {
    fn total(&self, category: usize) -> i64 {
        self.series.iter().map(|s| s.values.get(category).copied().unwrap_or(0).max(0)).sum()
    }

    /// The largest thing a bar has to reach: a total or a limit.
    fn scale(&self) -> i64 {
        let totals = (0..self.categories.len()).map(|c| self.total(c));
        let limits = self.limit.iter().flat_map(|l| l.values.iter().flatten().copied());
        totals.chain(limits).max().unwrap_or(0).max(1)
    }

    fn legend_entries(&self) -> Vec<(&str, &str)> {
        let mut entries: Vec<(&str, &str)> =
            self.series.iter().enumerate().map(|(i, s)| (s.name.as_str(), PALETTE[i % PALETTE.len()])).collect();
        if let Some(limit) = &self.limit {
            entries.push((limit.name.as_str(), "#000000"));
        }
        entries
    }

    /// The chart as an `<svg>` element; `format` turns a value into its label.
    pub fn to_svg(&self, format: impl Fn(i64) -> String) -> String {
        let legend = self.legend_entries();
        // A single unnamed series needs no legend.
        let show_legend = legend.len() > 1;
        let places = legend_places(&legend);
        let legend_rows = if show_legend { places.last().map_or(0, |&(_, row)| row + 1) } else { 0 };
        let top = TITLE_HEIGHT + legend_rows * LEGEND_ROW;
        let height = top + ROW * self.categories.len().max(1) as i64 + 8;
        let scale = self.scale();
        let x = |value: i64| LABEL_WIDTH + (i128::from(value.max(0)) * i128::from(BAR_AREA) / i128::from(scale)) as i64;
        let id = escape(&self.id);
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" aria-labelledby="{id}-title {id}-desc">"#
        );
        let _ = write!(svg, r#"<title id="{id}-title">{}</title>"#, escape(&self.title));
        let _ = write!(svg, r#"<desc id="{id}-desc">{}</desc>"#, escape(&self.describe(&format)));
        let _ =
            write!(svg, r#"<text x="0" y="18" class="chart-title" font-weight="bold">{}</text>"#, escape(&self.title));
        if show_legend {
            for ((name, colour), (lx, row)) in legend.iter().zip(&places) {
                let ly = TITLE_HEIGHT + row * LEGEND_ROW;
                let _ = write!(
                    svg,
                    r#"<rect x="{lx}" y="{}" width="12" height="12" fill="{colour}"/><text x="{}" y="{}" font-size="12">{}</text>"#,
                    ly + 2,
                    lx + 16,
                    ly + 12,
                    escape(name)
                );
            }
        }
        if self.categories.is_empty() {
            let _ = write!(svg, r#"<text x="0" y="{}" font-size="13">No data for this selection.</text>"#, top + 20);
        }
        for (c, category) in self.categories.iter().enumerate() {
            let y = top + c as i64 * ROW;
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" font-size="13" text-anchor="end">{}</text>"#,
                LABEL_WIDTH - 6,
                y + BAR - 5,
                escape(category)
            );
            let mut start = 0;
            for (s, series) in self.series.iter().enumerate() {
                let value = series.values.get(c).copied().unwrap_or(0).max(0);
                if value == 0 {
                    continue;
                }
                let (x0, x1) = (x(start), x(start + value));
                start += value;
                let _ = write!(
                    svg,
                    r#"<rect x="{x0}" y="{y}" width="{}" height="{BAR}" fill="{}"><title>{}</title></rect>"#,
                    (x1 - x0).max(1),
                    PALETTE[s % PALETTE.len()],
                    escape(&format!("{category}, {}: {}", series.name, format(value)))
                );
            }
            let total = self.total(c);
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" font-size="13">{}</text>"#,
                x(total) + 6,
                y + BAR - 5,
                escape(&format(total))
            );
            if let Some(value) = self.limit.as_ref().and_then(|l| l.values.get(c).copied().flatten()) {
                let name = self.limit.as_ref().map_or("", |l| l.name.as_str());
                let lx = x(value);
                let _ = write!(
                    svg,
                    r##"<line x1="{lx}" x2="{lx}" y1="{}" y2="{}" stroke="#000000" stroke-width="2" stroke-dasharray="4 2"><title>{}</title></line>"##,
                    y - 3,
                    y + BAR + 3,
                    escape(&format!("{category}, {name}: {}", format(value)))
                );
            }
        }
        svg.push_str("</svg>");
        svg
    }

    /// Every figure in words, for screen readers: `alpha: $3.00 (aws $2.00, azure $1.00)`.
    fn describe(&self, format: &impl Fn(i64) -> String) -> String {
        if self.categories.is_empty() {
            return "No data for this selection.".into();
        }
        self.categories
            .iter()
            .enumerate()
            .map(|(c, category)| {
                let mut text = format!("{category}: {}", format(self.total(c)));
                if self.series.len() > 1 {
                    let parts: Vec<String> = self
                        .series
                        .iter()
                        .filter_map(|s| {
                            s.values.get(c).filter(|v| **v > 0).map(|v| format!("{} {}", s.name, format(*v)))
                        })
                        .collect();
                    let _ = write!(text, " ({})", parts.join(", "));
                }
                if let Some((name, value)) =
                    self.limit.as_ref().and_then(|l| l.values.get(c).copied().flatten().map(|v| (&l.name, v)))
                {
                    let _ = write!(text, ", {name} {}", format(value));
                }
                text
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Where each legend entry goes (x, row): side by side, as wide as its text (about 7 px a
/// character at 12 px), on a new row when the chart's width is used up.
fn legend_places(legend: &[(&str, &str)]) -> Vec<(i64, i64)> {
    let mut places = Vec::with_capacity(legend.len());
    let (mut x, mut row) = (0, 0);
    for (name, _) in legend {
        let width = 16 + 7 * name.chars().count() as i64 + LEGEND_GAP;
        if x > 0 && x + width > WIDTH {
            (x, row) = (0, row + 1);
        }
        places.push((x, row));
        x += width;
    }
    places
}

/// Text for XML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        Chart {
            id: "by-team".into(),
            title: "Cost by team".into(),
            categories: vec!["alpha".into(), "beta".into()],
            series: vec![
                Series { name: "aws".into(), values: vec![300, 100] },
                Series { name: "azure".into(), values: vec![100, 0] },
            ],
            limit: None,
        }
    }

    fn dollars(v: i64) -> String {
        format!("${v}")
    }

    #[test]
    fn bars_are_stacked_and_scaled_to_the_largest_total() {
        let svg = chart().to_svg(dollars);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        // alpha's total (400) spans the whole bar area: aws 3/4 of it, then azure 1/4.
        let area = BAR_AREA;
        assert!(
            svg.contains(&format!(r#"<rect x="{LABEL_WIDTH}" y="50" width="{}" height="20""#, area * 3 / 4)),
            "{svg}"
        );
        assert!(
            svg.contains(&format!(r#"x="{}" y="50" width="{}""#, LABEL_WIDTH + area * 3 / 4, area - area * 3 / 4)),
            "{svg}"
        );
        // beta: 100 of 400, aws only (a zero segment draws nothing).
        assert!(svg.contains(&format!(r#"<rect x="{LABEL_WIDTH}" y="80" width="{}""#, area / 4)), "{svg}");
        assert_eq!(svg.matches("<rect x=\"170\"").count(), 2);
    }

    #[test]
    fn every_figure_is_in_text_for_readers_without_sight() {
        let svg = chart().to_svg(dollars);
        assert!(svg.contains(r#"role="img""#));
        assert!(svg.contains(r#"aria-labelledby="by-team-title by-team-desc""#));
        assert!(svg.contains(r#"<title id="by-team-title">Cost by team</title>"#));
        assert!(svg.contains("alpha: $400 (aws $300, azure $100); beta: $100 (aws $100)"), "{svg}");
        assert!(svg.contains("<title>alpha, azure: $100</title>"));
        // Labels: categories, totals and the legend are text, not only colour.
        for text in [">alpha</text>", ">$400</text>", ">$100</text>", ">aws</text>", ">azure</text>"] {
            assert!(svg.contains(text), "{text} missing from {svg}");
        }
    }

    #[test]
    fn names_are_escaped() {
        let mut chart = chart();
        chart.categories[0] = "<script>&\"".into();
        let svg = chart.to_svg(dollars);
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;&amp;&quot;"));
    }

    #[test]
    fn a_limit_line_counts_in_the_scale() {
        let mut chart = chart();
        chart.limit = Some(Limit { name: "budget".into(), values: vec![Some(800), None] });
        let svg = chart.to_svg(dollars);
        // The budget (800) is now the largest value: alpha's 400 fills half the area.
        assert!(svg.contains(&format!(r#"<rect x="{LABEL_WIDTH}" y="50" width="{}""#, BAR_AREA * 3 / 8)), "{svg}");
        assert!(svg.contains(&format!(r#"<line x1="{}""#, LABEL_WIDTH + BAR_AREA)));
        assert!(svg.contains("alpha: $400 (aws $300, azure $100), budget $800"));
        assert!(svg.contains(">budget</text>"));
    }

    #[test]
    fn legend_entries_are_as_wide_as_their_names_and_wrap() {
        let long = "forecast for the rest of the month";
        let places = legend_places(&[("spent", ""), (long, ""), ("budget", "")]);
        assert_eq!(places[0], (0, 0));
        assert_eq!(places[1], (16 + 35 + LEGEND_GAP, 0));
        assert_eq!(places[2].0, places[1].0 + 16 + 7 * long.len() as i64 + LEGEND_GAP);
        let many: Vec<(&str, &str)> = vec![(long, ""); 4];
        assert_eq!(legend_places(&many).iter().map(|p| p.1).collect::<Vec<_>>(), [0, 0, 1, 1]);
    }

    #[test]
    fn an_empty_chart_says_so() {
        let chart = Chart { id: "x".into(), title: "t".into(), categories: vec![], series: vec![], limit: None };
        let svg = chart.to_svg(dollars);
        assert!(svg.contains("No data for this selection."));
        assert_eq!(chart.scale(), 1);
    }
}
