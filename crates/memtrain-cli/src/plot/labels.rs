//! Bar labels of the memory plot: a policy's short name and its wrapping.

use memtrain::policy::MemoryPolicy;

/// [`MemoryPolicy::short`] (the keys that differ from plain burn, as the table names the
/// policy) with a remat budget rounded to a tenth of a MiB.
pub(super) fn short_label(policy: &MemoryPolicy) -> String {
    let short = policy.short();
    let (keys, overrides) = match short.find(" +") {
        Some(at) => short.split_at(at),
        None => (short.as_str(), ""),
    };
    let keys: Vec<String> = keys.split(',').map(budget_in_mib).collect();
    keys.join(",") + overrides
}

/// A remat budget (`remat=budget:2205696B`, `remat=budget:2.103515625MiB`) rounded to a tenth
/// of a MiB, `remat=budget:2.1MiB`; any other item as it is.
fn budget_in_mib(item: &str) -> String {
    match item
        .strip_prefix("remat=budget:")
        .and_then(|v| memtrain::policy::parse_size(v).ok())
    {
        Some(bytes) => format!("remat=budget:{:.1}MiB", bytes as f64 / (1u64 << 20) as f64),
        None => item.to_string(),
    }
}

/// `label` in lines of at most `width` characters, broken after commas and before a
/// " +N block overrides" (a longer item gets a line of its own), at most `max_lines` of them, the last ending in "..." when some were
/// left out.
pub(super) fn wrap(label: &str, width: usize, max_lines: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    // " +2 block overrides" after the keys is an item of its own.
    let (keys, overrides) = match label.find(" +") {
        Some(at) => (&label[..at], Some(label[at..].trim_start())),
        None => (label, None),
    };
    let items: Vec<&str> = keys.split_inclusive(',').chain(overrides).collect();
    for item in items {
        match lines.last_mut() {
            Some(line) if line.chars().count() + item.chars().count() <= width => {
                line.push_str(item)
            }
            _ => lines.push(item.to_string()),
        }
    }
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        if let Some(last) = lines.last_mut() {
            last.push_str("...");
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_label_plain_burn_as_plain() {
        assert_eq!(short_label(&MemoryPolicy::default()), "plain");
    }

    #[test]
    fn should_keep_only_what_differs_from_plain() {
        let policy: MemoryPolicy = "attn=memeff,act=inverted,norm=output".parse().unwrap();
        assert_eq!(short_label(&policy), "act=inverted,norm=output,attn=memeff");
    }

    #[test]
    fn should_round_a_remat_budget_to_a_tenth_of_a_mib() {
        let policy: MemoryPolicy = "act=inverted,remat=budget:2205696B".parse().unwrap();
        assert_eq!(short_label(&policy), "act=inverted,remat=budget:2.1MiB");
        assert_eq!(
            budget_in_mib("remat=budget:2.103515625MiB"),
            "remat=budget:2.1MiB"
        );
        assert_eq!(budget_in_mib("act=inverted"), "act=inverted");
    }

    #[test]
    fn should_wrap_after_commas_within_the_width() {
        let lines = wrap("act=inverted,norm=output,attn=memeff", 26, 5);
        assert_eq!(lines, ["act=inverted,norm=output,", "attn=memeff"]);
        assert!(lines.iter().all(|l| l.chars().count() <= 26));
    }

    #[test]
    fn should_give_a_long_item_its_own_line_and_cut_extra_lines() {
        assert_eq!(wrap("a,bbbbbbbbbb,c", 4, 5), ["a,", "bbbbbbbbbb,", "c"]);
        assert_eq!(wrap("a,b,c,d", 2, 2), ["a,", "b,..."]);
    }

    #[test]
    fn should_put_block_overrides_on_a_line_of_their_own() {
        assert_eq!(
            wrap("act=inverted,remat=budget:2.1MiB +2 block overrides", 26, 5),
            ["act=inverted,", "remat=budget:2.1MiB", "+2 block overrides"]
        );
    }
}
