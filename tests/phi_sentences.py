"""The identifier test set: spoken-style sentences with planted identifiers (and where they are), and
clinical sentences with none.

``planted()`` crosses templates (what is said at the bedside of an EMU) with
identifier values in the forms Whisper writes them (digits, words, spelled
out), one identifier per sentence: each case is (sentence, kind, start, end).
Names come from several languages, most of them not in the census lists the
scrubber uses (so a name is found from its context, not looked up).
``CLINICAL`` has no identifier: every word the scrubber removes from it is a
clinical word lost.
"""

from __future__ import annotations

from itertools import cycle

NAMES = ["Jane Doe", "Maria Gonzalez", "Kevin", "Siobhan O'Connor", "Oluwaseun Adeyemi", "Nguyen Lan",
         "Robert Smith", "Priya Raman", "Anna Kowalski", "Tom Becker", "Aiko Tanaka", "Dmitri Volkov",
         "Fatima Zahra", "Grace Miller", "Lukas", "Ingrid Johansson", "Carlos", "Mei Chen"]
NAME_TEMPLATES = ["My name is {X}.", "Hi {X}, can you hear me?", "This is {X}, I'm your nurse tonight.",
                  "Her son {X} is on the way.", "Dr. {X} is coming to see you.", "Thank you, {X}.",
                  "Mrs. {X}, squeeze my hand please.", "Okay {X}, stay with me.", "Hello {X}, look at me.",
                  "Is Mr. {X} still in the room?", "Her daughter {X} called earlier.", "Call me {X}.",
                  "Nurse {X} pressed the button.", "My name's {X} and I'm here with you."]
DATES = ["March fourth 1961", "March 4th, 1961", "3/4/1961", "1961-03-04", "the fourth of March nineteen sixty-one",
         "4 March 1961", "March nineteen sixty-one", "nineteen sixty-one", "October 12", "the twenty-first of June",
         "June 21st 2019", "two thousand and five", "December 3, 2020", "12/03/61", "September the ninth",
         "May 5th", "1987"]
DATE_TEMPLATES = ["Date of birth {X}.", "I was born on {X}.", "She was admitted on {X}.", "Her birthday is {X}.",
                  "The last seizure was on {X}.", "Born {X}, is that right?"]
AGES = ["ninety-two years old", "93 years old", "aged 95", "one hundred and one years old", "ninety-nine year old",
        "ninety one years old"]
AGE_TEMPLATES = ["He is {X}.", "She's {X} and lives alone.", "My grandmother is {X}."]
IDS = ["4471903", "four four seven one nine oh three", "44 71 903", "double four seven one nine oh three", "A0002",
       "seven seven two, four one nine, five five", "UA6693LK", "123-45-6789", "nine eight seven six five four two",
       "3 2 1 8 8 7"]
ID_TEMPLATES = ["MRN {X}.", "Medical record number {X}.", "Her patient number is {X}.", "The number is {X}.",
                "Can you read it out? {X}.", "Social security number {X}, please."]
PHONES = ["555-123-4567", "(555) 123-4567", "five five five, one two three, four five six seven", "+1 555 123 4567"]
PHONE_TEMPLATES = ["Call me at {X}.", "Her husband's number is {X}.", "You can reach him on {X} tonight."]
EMAILS = ["jane.doe@gmail.com", "jane dot doe at gmail dot com", "kowalski_anna@hospital.org"]
EMAIL_TEMPLATES = ["My email is {X}.", "Send it to {X} please."]
ADDRESSES = ["12 Oak Street", "4521 North Maple Avenue", "apartment 4B", "twelve Oak Street", "88 Church Road"]
ADDRESS_TEMPLATES = ["I live at {X}.", "Her address is {X}, near the school."]

GROUPS = [("NAME", NAMES, NAME_TEMPLATES), ("DATE", DATES, DATE_TEMPLATES), ("AGE", AGES, AGE_TEMPLATES),
          ("ID", IDS, ID_TEMPLATES), ("PHONE", PHONES, PHONE_TEMPLATES), ("EMAIL", EMAILS, EMAIL_TEMPLATES),
          ("ADDRESS", ADDRESSES, ADDRESS_TEMPLATES)]

CLINICAL = [
    "Can you squeeze my hand? One, two, three, four, five.",
    "Open your eyes for me. Can you hear me? Look at me.",
    "She has clonic jerking of the right arm, about thirty seconds now.",
    "His head is turning to the left, eyes deviated to the left.",
    "Give two milligrams of lorazepam IV, and note the time.",
    "Is the EEG still running? Check the electrodes on the left side.",
    "She is groaning and moaning, breathing is noisy.",
    "He is not responding to his name. Blank stare, lip smacking.",
    "Okay, the seizure stopped at two minutes forty seconds.",
    "Turn her on her side, suction please, oxygen at two liters.",
    "Are you with us? What is your name? Where are you right now?",
    "Count backwards from ten for me. Ten, nine, eight, seven.",
    "His left arm is stiff, tonic posturing, figure of four.",
    "She's waking up now, post-ictal, a bit confused.",
    "Mark the time, it started at ten thirty.",
    "Will you raise your right arm for me? Good, now the left.",
    "May I check your pupils? Follow my finger.",
    "There's automatisms with the right hand, fumbling with the sheets.",
    "Pelvic thrusting and bicycling of the legs, eyes closed.",
    "The nurse pressed the event button at the start.",
    "Bilateral tonic-clonic, about ninety seconds in total.",
    "He said the word hospital during the seizure, ictal speech.",
    "Her heart rate is one hundred and twenty, saturation ninety-four percent.",
    "Remember these three words: apple, table, penny.",
    "What day is it today? Do you know where you are?",
    "I'm going to check your blood pressure now.",
    "She had an aura, a rising feeling in the stomach, then went quiet.",
    "Grimacing on the right side of the face, then head version.",
    "Give him a minute, he's still drowsy.",
    "Dystonic posturing of the left hand and chewing movements.",
    "Can you say the sentence: today is a sunny day in the hospital.",
    "The video shows asynchronous limb movements and side to side head shaking.",
    "Ictal crying, tears, no response to questions for about two minutes.",
    "Hope you feel better. Rest now, we will check on you in an hour.",
    "Version of the head to the right, then generalised clonic jerks.",
    "She's been seizure-free for forty-eight hours on the current dose.",
    "Take a deep breath, in and out, hyperventilation for three minutes.",
    "Photic stimulation now, keep your eyes closed.",
    "Last dose of levetiracetam was five hundred milligrams at eight.",
]


def planted() -> list[tuple[str, str, int, int]]:
    """(sentence, kind, start, end) for every template x value of every kind, value in the template's slot."""
    cases = []
    for kind, values, templates in GROUPS:
        # every value at least twice, every template at least once
        n = max(2 * len(values), len(templates))
        for value, template in zip((values * 3)[:n], cycle(templates)):
            head, tail = template.split("{X}")
            cases.append((head + value + tail, kind, len(head), len(head) + len(value)))
    return cases
