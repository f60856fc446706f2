"""capitals: few-shot place <-> capital questions with exact answers, for judging TNOT offline.

A task where the bundled 270M model is right often but not always (its plain accuracy must
leave room to move either way), scored without a judge model: the first line of the reply
must be the answer or one of its accepted spellings, case and accents ignored
(tjdkit.evaluation.answers). The places are the sovereign countries, and the US states,
Canadian provinces and Australian states, whose capitals are often not their largest
city. Both directions are asked ("Country: Peru / Capital:" and "Capital: Lima / Country:"), four fixed
worked examples open every prompt, and the examples' countries are never asked. The items
are shuffled once with a fixed seed and cut into `eval` (for choosing settings, e.g. a
sweep) and `test` (for reporting them), so a setting chosen on one is measured on the other.
"""

from __future__ import annotations

import random
from typing import Optional

# (country, capital, other accepted answers for the capital). Sovereign states; where a
# country has several capitals, or a common English spelling differs, each is accepted.
COUNTRIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Afghanistan", "Kabul", ()), ("Albania", "Tirana", ()), ("Algeria", "Algiers", ()),
    ("Andorra", "Andorra la Vella", ()), ("Angola", "Luanda", ()), ("Antigua and Barbuda", "Saint John's", ("St. John's",)),
    ("Argentina", "Buenos Aires", ()), ("Armenia", "Yerevan", ()), ("Australia", "Canberra", ()),
    ("Austria", "Vienna", ()), ("Azerbaijan", "Baku", ()), ("Bahamas", "Nassau", ()), ("Bahrain", "Manama", ()),
    ("Bangladesh", "Dhaka", ()), ("Barbados", "Bridgetown", ()), ("Belarus", "Minsk", ()), ("Belgium", "Brussels", ()),
    ("Belize", "Belmopan", ()), ("Benin", "Porto-Novo", ("Porto Novo",)), ("Bhutan", "Thimphu", ()),
    ("Bolivia", "Sucre", ("La Paz",)), ("Bosnia and Herzegovina", "Sarajevo", ()), ("Botswana", "Gaborone", ()),
    ("Brazil", "Brasilia", ()), ("Brunei", "Bandar Seri Begawan", ()), ("Bulgaria", "Sofia", ()),
    ("Burkina Faso", "Ouagadougou", ()), ("Burundi", "Gitega", ("Bujumbura",)), ("Cambodia", "Phnom Penh", ()),
    ("Cameroon", "Yaounde", ()), ("Canada", "Ottawa", ()), ("Cape Verde", "Praia", ()),
    ("Central African Republic", "Bangui", ()), ("Chad", "N'Djamena", ("Ndjamena",)), ("Chile", "Santiago", ()),
    ("China", "Beijing", ()), ("Colombia", "Bogota", ()), ("Comoros", "Moroni", ()),
    ("Democratic Republic of the Congo", "Kinshasa", ()), ("Republic of the Congo", "Brazzaville", ()),
    ("Costa Rica", "San Jose", ()), ("Croatia", "Zagreb", ()), ("Cuba", "Havana", ()), ("Cyprus", "Nicosia", ()),
    ("Czech Republic", "Prague", ()), ("Denmark", "Copenhagen", ()), ("Djibouti", "Djibouti", ("Djibouti City",)),
    ("Dominica", "Roseau", ()), ("Dominican Republic", "Santo Domingo", ()), ("Ecuador", "Quito", ()),
    ("El Salvador", "San Salvador", ()), ("Equatorial Guinea", "Malabo", ()), ("Eritrea", "Asmara", ()),
    ("Estonia", "Tallinn", ()), ("Eswatini", "Mbabane", ("Lobamba",)), ("Ethiopia", "Addis Ababa", ()),
    ("Fiji", "Suva", ()), ("Finland", "Helsinki", ()), ("Gabon", "Libreville", ()), ("Gambia", "Banjul", ()),
    ("Georgia", "Tbilisi", ()), ("Germany", "Berlin", ()), ("Ghana", "Accra", ()), ("Greece", "Athens", ()),
    ("Grenada", "Saint George's", ("St. George's",)), ("Guatemala", "Guatemala City", ()), ("Guinea", "Conakry", ()),
    ("Guinea-Bissau", "Bissau", ()), ("Guyana", "Georgetown", ()), ("Haiti", "Port-au-Prince", ()),
    ("Honduras", "Tegucigalpa", ()), ("Hungary", "Budapest", ()), ("Iceland", "Reykjavik", ()),
    ("India", "New Delhi", ()), ("Indonesia", "Jakarta", ()), ("Iran", "Tehran", ()), ("Iraq", "Baghdad", ()),
    ("Ireland", "Dublin", ()), ("Italy", "Rome", ()), ("Ivory Coast", "Yamoussoukro", ()),
    ("Jamaica", "Kingston", ()), ("Jordan", "Amman", ()), ("Kazakhstan", "Astana", ()), ("Kenya", "Nairobi", ()),
    ("Kiribati", "Tarawa", ("South Tarawa",)), ("Kuwait", "Kuwait City", ()), ("Kyrgyzstan", "Bishkek", ()),
    ("Laos", "Vientiane", ()), ("Latvia", "Riga", ()), ("Lebanon", "Beirut", ()), ("Lesotho", "Maseru", ()),
    ("Liberia", "Monrovia", ()), ("Libya", "Tripoli", ()), ("Liechtenstein", "Vaduz", ()),
    ("Lithuania", "Vilnius", ()), ("Luxembourg", "Luxembourg", ("Luxembourg City",)), ("Madagascar", "Antananarivo", ()),
    ("Malawi", "Lilongwe", ()), ("Malaysia", "Kuala Lumpur", ()), ("Maldives", "Male", ()), ("Mali", "Bamako", ()),
    ("Malta", "Valletta", ()), ("Marshall Islands", "Majuro", ()), ("Mauritania", "Nouakchott", ()),
    ("Mauritius", "Port Louis", ()), ("Mexico", "Mexico City", ()), ("Micronesia", "Palikir", ()),
    ("Moldova", "Chisinau", ()), ("Monaco", "Monaco", ()), ("Mongolia", "Ulaanbaatar", ("Ulan Bator",)),
    ("Montenegro", "Podgorica", ()), ("Morocco", "Rabat", ()), ("Mozambique", "Maputo", ()),
    ("Myanmar", "Naypyidaw", ("Nay Pyi Taw",)), ("Namibia", "Windhoek", ()), ("Nauru", "Yaren", ()),
    ("Nepal", "Kathmandu", ()), ("Netherlands", "Amsterdam", ()), ("New Zealand", "Wellington", ()),
    ("Nicaragua", "Managua", ()), ("Niger", "Niamey", ()), ("Nigeria", "Abuja", ()), ("North Korea", "Pyongyang", ()),
    ("North Macedonia", "Skopje", ()), ("Norway", "Oslo", ()), ("Oman", "Muscat", ()), ("Pakistan", "Islamabad", ()),
    ("Palau", "Ngerulmud", ()), ("Panama", "Panama City", ()), ("Papua New Guinea", "Port Moresby", ()),
    ("Paraguay", "Asuncion", ()), ("Peru", "Lima", ()), ("Philippines", "Manila", ()), ("Poland", "Warsaw", ()),
    ("Portugal", "Lisbon", ()), ("Qatar", "Doha", ()), ("Romania", "Bucharest", ()), ("Russia", "Moscow", ()),
    ("Rwanda", "Kigali", ()), ("Saint Kitts and Nevis", "Basseterre", ()), ("Saint Lucia", "Castries", ()),
    ("Saint Vincent and the Grenadines", "Kingstown", ()), ("Samoa", "Apia", ()), ("San Marino", "San Marino", ()),
    ("Sao Tome and Principe", "Sao Tome", ()), ("Saudi Arabia", "Riyadh", ()), ("Senegal", "Dakar", ()),
    ("Serbia", "Belgrade", ()), ("Seychelles", "Victoria", ()), ("Sierra Leone", "Freetown", ()),
    ("Singapore", "Singapore", ()), ("Slovakia", "Bratislava", ()), ("Slovenia", "Ljubljana", ()),
    ("Solomon Islands", "Honiara", ()), ("Somalia", "Mogadishu", ()), ("South Africa", "Pretoria", ("Cape Town", "Bloemfontein")),
    ("South Korea", "Seoul", ()), ("South Sudan", "Juba", ()), ("Spain", "Madrid", ()),
    ("Sri Lanka", "Sri Jayawardenepura Kotte", ("Colombo", "Kotte")), ("Sudan", "Khartoum", ()),
    ("Suriname", "Paramaribo", ()), ("Sweden", "Stockholm", ()), ("Switzerland", "Bern", ("Berne",)),
    ("Syria", "Damascus", ()), ("Tajikistan", "Dushanbe", ()), ("Tanzania", "Dodoma", ()), ("Thailand", "Bangkok", ()),
    ("Timor-Leste", "Dili", ()), ("Togo", "Lome", ()), ("Tonga", "Nuku'alofa", ()),
    ("Trinidad and Tobago", "Port of Spain", ()), ("Tunisia", "Tunis", ()), ("Turkey", "Ankara", ()),
    ("Turkmenistan", "Ashgabat", ()), ("Tuvalu", "Funafuti", ()), ("Uganda", "Kampala", ()), ("Ukraine", "Kyiv", ("Kiev",)),
    ("United Arab Emirates", "Abu Dhabi", ()), ("United Kingdom", "London", ()),
    ("United States", "Washington, D.C.", ("Washington", "Washington DC", "Washington D.C.", "Washington, DC")),
    ("Uruguay", "Montevideo", ()), ("Uzbekistan", "Tashkent", ()), ("Vanuatu", "Port Vila", ()),
    ("Vatican City", "Vatican City", ()), ("Venezuela", "Caracas", ()), ("Vietnam", "Hanoi", ()),
    ("Yemen", "Sanaa", ()), ("Zambia", "Lusaka", ()), ("Zimbabwe", "Harare", ()),
)
# Capitals below the country level, where the largest city is the wrong answer as often as not.
REGIONS: tuple[tuple[str, str, str], ...] = tuple(
    ("US state", name, capital) for name, capital in (
        ("Alabama", "Montgomery"), ("Alaska", "Juneau"), ("Arizona", "Phoenix"), ("Arkansas", "Little Rock"),
        ("California", "Sacramento"), ("Colorado", "Denver"), ("Connecticut", "Hartford"), ("Delaware", "Dover"),
        ("Florida", "Tallahassee"), ("Georgia", "Atlanta"), ("Hawaii", "Honolulu"), ("Idaho", "Boise"),
        ("Illinois", "Springfield"), ("Indiana", "Indianapolis"), ("Iowa", "Des Moines"), ("Kansas", "Topeka"),
        ("Kentucky", "Frankfort"), ("Louisiana", "Baton Rouge"), ("Maine", "Augusta"), ("Maryland", "Annapolis"),
        ("Massachusetts", "Boston"), ("Michigan", "Lansing"), ("Minnesota", "Saint Paul"), ("Mississippi", "Jackson"),
        ("Missouri", "Jefferson City"), ("Montana", "Helena"), ("Nebraska", "Lincoln"), ("Nevada", "Carson City"),
        ("New Hampshire", "Concord"), ("New Jersey", "Trenton"), ("New Mexico", "Santa Fe"), ("New York", "Albany"),
        ("North Carolina", "Raleigh"), ("North Dakota", "Bismarck"), ("Ohio", "Columbus"), ("Oklahoma", "Oklahoma City"),
        ("Oregon", "Salem"), ("Pennsylvania", "Harrisburg"), ("Rhode Island", "Providence"), ("South Carolina", "Columbia"),
        ("South Dakota", "Pierre"), ("Tennessee", "Nashville"), ("Texas", "Austin"), ("Utah", "Salt Lake City"),
        ("Vermont", "Montpelier"), ("Virginia", "Richmond"), ("Washington", "Olympia"), ("West Virginia", "Charleston"),
        ("Wisconsin", "Madison"), ("Wyoming", "Cheyenne"),
    )
) + tuple(
    ("Canadian province", name, capital) for name, capital in (
        ("Alberta", "Edmonton"), ("British Columbia", "Victoria"), ("Manitoba", "Winnipeg"), ("New Brunswick", "Fredericton"),
        ("Newfoundland and Labrador", "St. John's"), ("Nova Scotia", "Halifax"), ("Ontario", "Toronto"),
        ("Prince Edward Island", "Charlottetown"), ("Quebec", "Quebec City"), ("Saskatchewan", "Regina"),
    )
) + tuple(
    ("Australian state", name, capital) for name, capital in (
        ("New South Wales", "Sydney"), ("Victoria", "Melbourne"), ("Queensland", "Brisbane"),
        ("Western Australia", "Perth"), ("South Australia", "Adelaide"), ("Tasmania", "Hobart"),
    )
)
REGION_ALIASES = {"Saint Paul": ("St. Paul", "St Paul"), "St. John's": ("Saint John's",), "Quebec City": ("Quebec",)}
# The worked examples every prompt opens with; these countries are never asked.
SHOTS = ("France", "Japan", "Egypt", "Chile")
_SHOT_CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Egypt": "Cairo", "Chile": "Santiago"}
SPLITS = {"eval": 240, "test": 200}  # the rest of the shuffled items are unused
SHUFFLE_SEED = 2026
COUNTRY_ALIASES = {"Czech Republic": ("Czechia",), "Ivory Coast": ("Cote d'Ivoire", "Cote dIvoire"), "Cape Verde": ("Cabo Verde",),
                   "Timor-Leste": ("East Timor",), "Eswatini": ("Swaziland",), "Myanmar": ("Burma",),
                   "United States": ("USA", "United States of America", "US"), "United Kingdom": ("UK", "Britain"),
                   "North Macedonia": ("Macedonia",), "Turkey": ("Turkiye",),
                   "Democratic Republic of the Congo": ("DR Congo", "Congo", "Democratic Republic of Congo", "DRC"), "Republic of the Congo": ("Congo", "Republic of Congo", "Congo-Brazzaville")}


def _shots(question: str, answer: str) -> str:
    examples = [(country, _SHOT_CAPITALS[country]) for country in SHOTS]
    if question == "Capital":
        examples = [(capital, country) for country, capital in examples]
    return "".join(f"{question}: {x}\n{answer}: {y}\n\n" for x, y in examples)


def _items() -> list[dict]:
    """Every question, both directions, in the fixed shuffled order the splits are cut from."""
    places = [("Country", country, capital, aliases, COUNTRY_ALIASES.get(country, ()))
              for country, capital, aliases in COUNTRIES if country not in SHOTS]
    places += [(kind, name, capital, REGION_ALIASES.get(capital, ()), ()) for kind, name, capital in REGIONS]
    items = []
    for kind, name, capital, aliases, name_aliases in places:
        items.append({"prompt": _shots("Country", "Capital") + f"{kind}: {name}\nCapital:",
                      "answer": f" {capital}", "target": [capital, *aliases]})
        if capital == name:  # a capital named as its country (Singapore) asks nothing in reverse
            continue
        # in reverse, any place of that kind with that capital is right (Victoria: Seychelles, British Columbia)
        same = [other for other in places if other[0] == kind and other[2] == capital]
        items.append({"prompt": _shots("Capital", "Country") + f"Capital: {capital}\n{kind}:", "answer": f" {name}",
                      "target": [answer for other in same for answer in (other[1], *other[4])]})
    random.Random(SHUFFLE_SEED).shuffle(items)
    return items


def capitals_rows(split: str, size: Optional[int] = None, seed: int = 0) -> list[dict]:
    """Rows with prompt, answer, text and target (the accepted answers). `seed` reorders the
    split's rows (the split itself never changes); `size` takes the first rows."""
    items = _items()
    start = 0 if split == "eval" else SPLITS["eval"]
    rows = [{**item, "text": item["prompt"] + item["answer"]} for item in items[start : start + SPLITS[split]]]
    if seed:
        random.Random(seed).shuffle(rows)
    return rows[:size] if size is not None else rows
