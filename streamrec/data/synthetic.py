"""The seeded synthetic catalog and user population: streamrec's embedded default.

Items belong to 1-3 of :data:`TOPICS` and get natural titles and descriptions built from each
topic's words, so a text encoder places them sensibly. Users have age, gender, occupation and a
taste over topics that shifts with the time of day (context-dependent tastes). Everything is a
pure function of ``(seed, id)``: item ``i`` is the same whether generated alone or in a block of a
million, which lets the embedding job generate a large catalog block by block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from streamrec.data.catalog import Catalog

__all__ = ["TOPICS", "synthetic_items", "synthetic_users", "SyntheticWorld"]

TOPICS: dict[str, dict[str, list[str]]] = {
    "space": {"nouns": ["Starship", "Orbit", "Nebula", "Colony", "Comet", "Galaxy"],
              "adj": ["Distant", "Silent", "Frozen", "Red", "Endless"],
              "desc": ["a crew drifting between stars", "a colony on a hostile moon", "first contact at the edge of the galaxy"]},
    "crime": {"nouns": ["Heist", "Detective", "Alibi", "Syndicate", "Witness", "Informant"],
              "adj": ["Dark", "Crooked", "Cold", "Perfect", "Last"],
              "desc": ["a detective chasing a careful killer", "a heist that goes wrong", "a witness nobody believes"]},
    "romance": {"nouns": ["Letters", "Summer", "Wedding", "Promise", "Heart", "Dance"],
                "adj": ["Sweet", "Secret", "Second", "Endless", "Little"],
                "desc": ["two strangers meet on a train", "old lovers find each other again", "a wedding planner falls for the groom"]},
    "comedy": {"nouns": ["Roommates", "Road Trip", "Office", "Reunion", "Neighbors", "Party"],
               "adj": ["Crazy", "Awkward", "Big", "Totally", "Accidental"],
               "desc": ["friends on a disastrous road trip", "a reunion that spirals out of control", "neighbors at war over a fence"]},
    "horror": {"nouns": ["Cabin", "Curse", "Shadow", "Asylum", "Ritual", "Haunting"],
               "adj": ["Hollow", "Bleeding", "Forgotten", "Whispering", "Black"],
               "desc": ["a family moves into a haunted house", "campers hunted in the woods", "a curse passed down a bloodline"]},
    "documentary": {"nouns": ["Oceans", "Climate", "Empire", "Genome", "Voyage", "Harvest"],
                    "adj": ["Hidden", "Wild", "Real", "Untold", "Living"],
                    "desc": ["the science of a warming planet", "life in the deep ocean", "the history of a forgotten empire"]},
    "animation": {"nouns": ["Dragon", "Robot", "Kingdom", "Toys", "Forest", "Penguins"],
                  "adj": ["Little", "Brave", "Magic", "Tiny", "Flying"],
                  "desc": ["a young dragon learns to fly", "toys come alive at night", "a robot searches for its family"]},
    "war": {"nouns": ["Front", "Battalion", "Beachhead", "Siege", "Resistance", "Trenches"],
            "adj": ["Bloody", "Final", "Iron", "Burning", "Lost"],
            "desc": ["soldiers trapped behind enemy lines", "a resistance cell in an occupied city", "the last days of a long siege"]},
    "sports": {"nouns": ["Champion", "Rookie", "Comeback", "Season", "Rivals", "Coach"],
               "adj": ["Underdog", "Golden", "Perfect", "Fighting", "Final"],
               "desc": ["an underdog team chases the title", "a boxer's last fight", "a coach rebuilds a broken team"]},
    "fantasy": {"nouns": ["Sorcerer", "Crown", "Sword", "Realm", "Prophecy", "Witch"],
                "adj": ["Enchanted", "Ancient", "Shattered", "Golden", "Eternal"],
                "desc": ["a farm boy bound to a prophecy", "a witch hunted by the crown", "a quest for a shattered sword"]},
    "music": {"nouns": ["Band", "Tour", "Album", "Stage", "Melody", "Chorus"],
              "adj": ["Electric", "Broken", "Loud", "Midnight", "Velvet"],
              "desc": ["a band on its last tour", "a singer's rise and fall", "a choir that saves a town"]},
    "thriller": {"nouns": ["Conspiracy", "Agent", "Hostage", "Target", "Cipher", "Protocol"],
                 "adj": ["Deadly", "Silent", "Rogue", "Zero", "Hidden"],
                 "desc": ["a rogue agent exposes a conspiracy", "a hostage crisis in a skyscraper", "a code that could end the world"]},
}
TOPIC_NAMES = list(TOPICS)
OCCUPATIONS = ["student", "engineer", "artist", "doctor", "teacher", "writer", "lawyer", "retired", "technician",
               "salesman", "programmer", "homemaker"]


def _rng(seed: int, kind: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, kind, i])


def _item(seed: int, i: int) -> tuple[str, list[str], str, str, float]:
    r = _rng(seed, 1, i)
    k = int(r.choice([1, 1, 2, 2, 3]))
    topics = [TOPIC_NAMES[t] for t in r.choice(len(TOPIC_NAMES), size=k, replace=False)]
    main = TOPICS[topics[0]]
    title = f"{main['adj'][r.integers(len(main['adj']))]} {main['nouns'][r.integers(len(main['nouns']))]}"
    if r.random() < 0.3:
        other = TOPICS[topics[-1]]
        title += f" and the {other['nouns'][r.integers(len(other['nouns']))]}"
    if r.random() < 0.15:
        title += f" {int(r.integers(2, 5))}"
    desc = main["desc"][r.integers(len(main["desc"]))]
    year = int(r.integers(1950, 2026))
    popularity = float(r.pareto(1.5))  # heavy tail: a few hits, a long tail
    text = f"{title} ({year}). {', '.join(t.title() for t in topics)}. {desc.capitalize()}."
    return title, topics, desc, text, popularity


def synthetic_items(start: int, stop: int, seed: int = 0) -> pa.Table:
    """Items ``start..stop-1``: item_id, text, title, topics, year-free description, popularity."""
    rows = [_item(seed, i) for i in range(start, stop)]
    return pa.table({
        "item_id": [f"item{i}" for i in range(start, stop)],
        "text": [r[3] for r in rows],
        "title": [r[0] for r in rows],
        "topics": [" ".join(r[1]) for r in rows],
        "description": [r[2] for r in rows],
        "popularity": np.asarray([r[4] for r in rows], dtype=np.float32),
    })


def synthetic_users(n: int, seed: int = 0) -> pa.Table:
    """Users with demographics, a short self-description (user-side text) and taste over topics."""
    ids, ages, genders, occs, texts, tastes = [], [], [], [], [], []
    for u in range(n):
        r = _rng(seed, 2, u)
        age = int(np.clip(r.normal(34, 12), 13, 80))
        gender = str(r.choice(["F", "M"]))
        occ = OCCUPATIONS[int(r.integers(len(OCCUPATIONS)))]
        taste = r.dirichlet(np.full(len(TOPIC_NAMES), 0.3))
        top = [TOPIC_NAMES[t] for t in np.argsort(-taste)[:2]]
        ids.append(f"user{u}")
        ages.append(age)
        genders.append(gender)
        occs.append(occ)
        texts.append(f"{age} year old {occ} who enjoys {top[0]} and {top[1]}")
        tastes.append(taste.astype(np.float32))
    return pa.table({"user_id": ids, "age": ages, "gender": genders, "occupation": occs, "text": texts,
                     "taste": tastes})


@dataclass
class SyntheticWorld:
    """A catalog and a population with known tastes (for the simulators and tests)."""

    num_items: int = 2_000
    num_users: int = 1_000
    seed: int = 0

    def catalog(self) -> Catalog:
        return Catalog("synthetic", synthetic_items(0, self.num_items, self.seed),
                       synthetic_users(self.num_users, self.seed))
