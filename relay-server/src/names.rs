//! Readable random tunnel names (`brave-otter-3f9a`) for clients that ask for none.

use rand::seq::SliceRandom;
use rand::Rng;

const ADJECTIVES: &[&str] = &[
    "amber", "bold", "brave", "brisk", "calm", "clever", "cosmic", "crisp", "daring", "eager",
    "fancy", "fuzzy", "gentle", "glad", "golden", "happy", "jolly", "keen", "lively", "lucky",
    "mellow", "merry", "misty", "noble", "plucky", "proud", "quick", "quiet", "rapid", "shiny",
    "silent", "snowy", "sunny", "swift", "tidy", "witty",
];

const NOUNS: &[&str] = &[
    "badger", "beacon", "bison", "comet", "coral", "crane", "falcon", "ferret", "fjord", "gecko",
    "harbor", "heron", "island", "koala", "lagoon", "lantern", "lynx", "maple", "meadow", "otter",
    "panda", "pebble", "puffin", "quokka", "raven", "river", "robin", "salmon", "sparrow",
    "summit", "tiger", "walrus", "willow", "wombat", "yak", "zebra",
];

/// A random name: adjective, noun and four hex digits (about 20 million choices).
pub fn random_name() -> String {
    let mut rng = rand::thread_rng();
    // The lists are non-empty constants.
    let adj = ADJECTIVES.choose(&mut rng).expect("non-empty list");
    let noun = NOUNS.choose(&mut rng).expect("non-empty list");
    format!("{adj}-{noun}-{:04x}", rng.gen::<u16>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_names_are_valid_tunnel_names() {
        for _ in 0..100 {
            let n = random_name();
            shared_proto::TunnelName::parse(&n).unwrap();
        }
    }
}
