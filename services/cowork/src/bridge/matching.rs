//! Which remote agent, if any, takes a step. Pure: no I/O.
//!
//! The rule, in order: the first configured agent (in `[a2a] agents` order) with a skill whose
//! `id` or one of whose `tags` equals the step's domain (ASCII case-insensitive) takes it;
//! failing that, the first agent with a skill whose `id` appears as a whole word in the step's
//! title (words are runs of letters, digits, `-` and `_`). Tags are not matched against titles:
//! generic tags (`liquid`) would otherwise claim unrelated steps. No match: the step runs on
//! the built-in agent or a coding CLI as usual.

use liquid_a2a::pb;

/// Whether `skill` takes a step of `domain` by the first rule.
fn matches_domain(skill: &pb::AgentSkill, domain: &str) -> bool {
    !domain.is_empty()
        && (skill.id.eq_ignore_ascii_case(domain)
            || skill.tags.iter().any(|t| t.eq_ignore_ascii_case(domain)))
}

fn title_words(title: &str) -> impl Iterator<Item = &str> {
    title
        .split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_'))
        .filter(|w| !w.is_empty())
}

/// Whether `skill` takes a step titled `title` by the second rule.
fn matches_title(skill: &pb::AgentSkill, title: &str) -> bool {
    !skill.id.is_empty() && title_words(title).any(|w| w.eq_ignore_ascii_case(&skill.id))
}

/// The index in `cards` of the agent that takes a step of `domain` titled `title`, and the
/// id of the skill that matched; see the module documentation.
pub fn pick(cards: &[&pb::AgentCard], domain: &str, title: &str) -> Option<(usize, String)> {
    let by = |f: &dyn Fn(&pb::AgentSkill) -> bool| {
        cards
            .iter()
            .enumerate()
            .find_map(|(i, card)| card.skills.iter().find(|s| f(s)).map(|s| (i, s.id.clone())))
    };
    by(&|s| matches_domain(s, domain)).or_else(|| by(&|s| matches_title(s, title)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(name: &str, skills: &[(&str, &[&str])]) -> pb::AgentCard {
        pb::AgentCard {
            name: name.into(),
            skills: skills
                .iter()
                .map(|(id, tags)| pb::AgentSkill {
                    id: (*id).into(),
                    name: (*id).into(),
                    tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_domain_matches_skill_ids_and_tags_before_titles() {
        let a = card("a", &[("translate", &["i18n", "liquid"])]);
        let b = card("b", &[("ui", &[])]);
        let cards = [&a, &b];
        assert_eq!(
            pick(&cards, "UI", "translate the labels"),
            Some((1, "ui".into()))
        );
        assert_eq!(
            pick(&cards, "i18n", "anything"),
            Some((0, "translate".into()))
        );
        assert_eq!(
            pick(&cards, "api", "Translate the README"),
            Some((0, "translate".into()))
        );
    }

    #[test]
    fn titles_match_whole_skill_ids_only_and_never_tags() {
        let a = card("a", &[("echo", &["liquid"])]);
        let cards = [&a];
        assert_eq!(
            pick(&cards, "general", "Ask echo: hi"),
            Some((0, "echo".into()))
        );
        assert_eq!(pick(&cards, "general", "echoes everywhere"), None);
        assert_eq!(pick(&cards, "general", "the liquid platform"), None);
        assert_eq!(pick(&cards, "", ""), None);
        assert_eq!(pick(&[], "echo", "echo"), None);
    }

    #[test]
    fn the_first_configured_agent_wins_a_tie() {
        let a = card("a", &[("docs", &[])]);
        let b = card("b", &[("docs", &[])]);
        assert_eq!(pick(&[&a, &b], "docs", ""), Some((0, "docs".into())));
    }
}
