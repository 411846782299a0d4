//! The prompt sets. Each scenario is a fixed, versioned list of prompts (written for bakeoff, not
//! taken from a data set) plus a filler passage. A prompt is padded with filler words, or trimmed,
//! until its user message has the scenario's target number of tokens in the measured model's own
//! tokenizer; the search is deterministic, so the same model always gets the same prompt.
//!
//! Scenario targets count the user message's tokens: a model's chat template adds its own
//! overhead on top (Qwen2.5's default system prompt alone is about 20 tokens), and that overhead is
//! part of what using the model costs. Context-depth prompts instead count the whole rendered
//! prompt, because a depth is a number of positions in the KV cache.

use crate::error::{BenchError, Result};

/// Bumped whenever a prompt, filler or target changes, so results from different sets are never
/// compared as if they were the same measurement.
pub const SCENARIO_SET_VERSION: &str = "bakeoff-scenarios-v1";

pub use bakeoff_record::bench::ScenarioId;

/// The prompt set of a scenario.
pub fn scenario(id: ScenarioId) -> &'static Scenario {
    match id {
        ScenarioId::Short => &SHORT,
        ScenarioId::Medium => &MEDIUM,
        ScenarioId::Long => &LONG,
        ScenarioId::Code => &CODE,
        ScenarioId::Creative => &CREATIVE,
    }
}

pub struct Scenario {
    pub id: ScenarioId,
    /// Tokens of the user message, in the measured model's tokenizer.
    pub target_tokens: usize,
    /// Repetition `r` uses prompt `r % prompts.len()`.
    pub prompts: &'static [&'static str],
    /// Words appended, in order and repeated as needed, to reach the target.
    pub filler: &'static str,
}

pub static SHORT: Scenario = Scenario {
    id: ScenarioId::Short,
    target_tokens: 16,
    prompts: &[
        "What causes the seasons on Earth?",
        "Name three uses for baking soda at home.",
        "Why does the sky look blue during the day?",
    ],
    filler: "Answer briefly and plainly, in two or three sentences, for a curious reader.",
};

pub static MEDIUM: Scenario = Scenario {
    id: ScenarioId::Medium,
    target_tokens: 128,
    prompts: &[
        "Read this note from a neighbourhood association and list the decisions it reports.",
        "Here is a note from a neighbourhood association. Suggest two questions a new member might ask.",
        "Summarize the following note for a busy reader in two sentences.",
    ],
    filler: MEETING_NOTE,
};

pub static LONG: Scenario = Scenario {
    id: ScenarioId::Long,
    target_tokens: 512,
    prompts: &[
        "Summarize the following report in five bullet points, then name its main open question.",
        "Read the report below and write a one-paragraph abstract for it.",
        "List every date, number and place mentioned in the report below.",
    ],
    filler: RIVER_REPORT,
};

pub static CODE: Scenario = Scenario {
    id: ScenarioId::Code,
    target_tokens: 64,
    prompts: &[
        "Write a Python function merge_intervals(intervals) that merges overlapping closed intervals and returns them sorted by start.",
        "Write a Rust function that parses a line of comma-separated integers into a Vec<i64>, returning an error for any invalid field.",
        "Write a JavaScript function that debounces another function, so that calls within 300 milliseconds of each other collapse into one.",
    ],
    filler: "Use types where the language has them, handle empty input, add two short usage examples, keep the code \
             under forty lines, explain the approach in one sentence, and avoid external libraries.",
};

pub static CREATIVE: Scenario = Scenario {
    id: ScenarioId::Creative,
    target_tokens: 64,
    prompts: &[
        "Write a short story about a lighthouse keeper who finds a message in a bottle addressed to her grandmother.",
        "Write a poem about the first snowfall in a city that has not seen snow for twenty years.",
        "Write the opening scene of a mystery set on a night train crossing the mountains.",
    ],
    filler: "Use vivid but simple language, give the main character a name, include one line of dialogue, end on a \
             quiet image, and keep the tone warm rather than dark.",
};

/// The instruction that opens every context-depth prompt; the report below it fills the depth.
pub const DEPTH_PROMPT: &str =
    "Below are the field notes of a river survey. Read them, then continue them in the same style.";

const MEETING_NOTE: &str = "The Elm Street association met on Tuesday evening in the library annex, with twenty-three \
members present and two apologies. The treasurer reported that the spring plant sale raised enough to repair the \
fence around the shared garden, and the members agreed to hire a local carpenter rather than do the work themselves, \
since last year's volunteer repair lasted only one winter. A proposal to close the street for a summer fair was \
discussed at length: several members worried about access for the bakery's deliveries, so the fair will run on a \
Sunday, when the bakery is closed, and the committee will ask the council for a permit before the end of the month. \
The members also voted to move the compost bins away from the playground, after parents complained about wasps in \
August. Finally, the secretary reminded everyone that the association's email list will move to a new provider in \
May, and that members who do not confirm their address by then will stop receiving the monthly newsletter.";

const RIVER_REPORT: &str = "The survey of the lower Alder river began in March, when the water was still high from \
the snowmelt, and ran until the end of October. Four teams of two walked a fixed section of the bank each week, \
recording the water temperature, its clarity, the flow at three marked points, and every bird, fish and amphibian they \
could identify with confidence. The upper section, between the mill bridge and the weir, was the easiest to reach, and \
it produced the longest and most regular series of measurements. The middle section runs through farmland, where the \
teams needed permission from six different owners; two of them withdrew it in July, so the record for that stretch has \
a gap of five weeks. The lower section, near the estuary, is tidal, and the teams learned early that readings taken at \
low tide could not be compared with those taken at high tide, so from April onwards they timed their visits by the tide \
tables rather than by the clock. Water temperature rose steadily from six degrees in March to a peak of nineteen degrees \
in the second week of August, two degrees warmer than the same week in the previous survey, eight years ago. Clarity \
was good in the upper section all season, but after heavy rain in June the middle section turned brown for nine days, \
and samples taken there showed more fine soil than anywhere else on the river. The teams counted kingfishers at eleven \
places, twice as many as in the previous survey, and saw otters on four occasions, all of them near the weir, where the \
bank is overgrown and rarely visited. Brown trout were common above the mill bridge but scarce below it, and the teams \
found no trout at all in the tidal section, where the earlier survey had recorded a small population. Frogs and toads \
were counted in the spring only, at the ponds beside the middle section; their numbers were similar to those of the \
earlier survey, although one of the three ponds had dried out by May. The report recommends three things: planting a \
strip of grass and shrubs along the fields of the middle section to hold back soil after rain, asking the owners who \
withdrew their permission whether the teams may return next year, and repeating the survey every four years rather \
than every eight, so that changes such as the loss of the tidal trout can be noticed while something can still be done \
about them. The main open question is whether the warmer water in August is a lasting change or the result of one \
unusually dry summer; the teams could not answer it from a single season, and the report asks for a temperature logger \
to be left in the river all year, so that the next survey starts with a full record rather than weekly readings.";

/// Deterministically fits `base` plus a prefix of `filler` (repeated as needed) to at most
/// `target` tokens as counted by `count`; trims `base` by words when it alone is too long.
/// Returns the text and its token count.
pub fn fit_to_tokens(
    base: &str,
    filler: &str,
    target: usize,
    count: &mut dyn FnMut(&str) -> Result<usize>,
) -> Result<(String, usize)> {
    let base_words: Vec<&str> = base.split_whitespace().collect();
    let filler_words: Vec<&str> = filler.split_whitespace().collect();
    if base_words.is_empty() || filler_words.is_empty() {
        return Err(BenchError::InvalidArgument(
            "a scenario needs a prompt and a filler".into(),
        ));
    }
    let with_filler = |k: usize| -> String {
        let mut s = base_words.join(" ");
        for i in 0..k {
            s.push(' ');
            s.push_str(filler_words[i % filler_words.len()]);
        }
        s
    };
    let base_text = with_filler(0);
    let base_n = count(&base_text)?;
    if base_n > target {
        // Largest word prefix of the base that fits; at least one word so the prompt is never empty.
        let (mut lo, mut hi) = (1, base_words.len());
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if count(&base_words[..mid].join(" "))? <= target {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let text = base_words[..lo].join(" ");
        let n = count(&text)?;
        return Ok((text, n));
    }
    // Grow an upper bound, then binary-search the largest filler length that fits.
    let mut hi = 8;
    while count(&with_filler(hi))? <= target {
        hi *= 2;
        if hi > 1 << 20 {
            return Err(BenchError::InvalidArgument(format!(
                "cannot reach {target} tokens with filler words"
            )));
        }
    }
    let mut lo = 0;
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        if count(&with_filler(mid))? <= target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let text = with_filler(lo);
    let n = if lo == 0 { base_n } else { count(&text)? };
    Ok((text, n))
}

/// Words per token assumed for remote engines, whose tokenizer the bench cannot see; the
/// server's `usage` then reports the real count.
pub const REMOTE_WORDS_PER_TOKEN: f64 = 0.75;

/// Token count estimate used for remote engines: words / 0.75.
pub fn estimate_tokens(text: &str) -> usize {
    (text.split_whitespace().count() as f64 / REMOTE_WORDS_PER_TOKEN).ceil() as usize
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn words(s: &str) -> Result<usize> {
        Ok(s.split_whitespace().count())
    }

    #[test]
    fn fit_pads_and_trims_deterministically() {
        let (t, n) = fit_to_tokens("one two three", "a b c", 7, &mut words).unwrap();
        assert_eq!((t.as_str(), n), ("one two three a b c a", 7));
        let (t, n) = fit_to_tokens("one two three four", "x", 2, &mut words).unwrap();
        assert_eq!((t.as_str(), n), ("one two", 2));
        let (t, n) = fit_to_tokens("one two", "x", 2, &mut words).unwrap();
        assert_eq!((t.as_str(), n), ("one two", 2));
        for id in ScenarioId::ALL {
            let s = scenario(id);
            assert_eq!(s.id, id);
            for p in s.prompts {
                let (t, n) = fit_to_tokens(p, s.filler, s.target_tokens, &mut words).unwrap();
                assert_eq!(n, s.target_tokens, "{t}");
            }
        }
    }

    #[test]
    fn scenario_names_round_trip() {
        for id in ScenarioId::ALL {
            assert_eq!(id.name().parse::<ScenarioId>().unwrap(), id);
        }
        assert!("huge".parse::<ScenarioId>().is_err());
    }
}
