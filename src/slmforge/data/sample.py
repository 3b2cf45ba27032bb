"""slmforge's own sample data set: travel-assistant prompt/response pairs (and preference
pairs made from them: data/sample_preference.py).

Written for this project. The pairs are built deterministically from a hand-written table of
destinations (one fact per topic) and a few question and answer phrasings per topic, so the
text is varied, natural English and the same on every machine. The tiny-model builder pretrains
on it and the docs/tests fine-tune on it, so it must stay clean: every prompt is unique, every
pair is single-turn, and `slmforge data validate` passes on it. Importable without torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from slmforge.artifacts import atomic_file


class Destination(NamedTuple):
    """One place and one fact per topic. `sight` and `food` are noun phrases; the rest are
    whole sentences so the answer templates can wrap them without bending grammar."""

    name: str
    sight: str
    food: str
    transport: str
    season: str
    pack: str
    area: str


D = Destination
DESTINATIONS: tuple[Destination, ...] = (
    D(
        "Lisbon",
        "the tiled lanes of the Alfama and the view from a miradouro at sunset",
        "a warm pastel de nata from a bakery in Belem",
        "Ride the old Tram 28 through the hills once, then use the metro and your feet.",
        "Spring and early autumn are ideal, with warm days and far fewer crowds than July.",
        "Bring shoes with good grip, because the polished cobblestones get slippery.",
        "Stay in Baixa or Chiado to be central and walk to most sights.",
    ),
    D(
        "Porto",
        "the Ribeira waterfront and a walk across the upper deck of the Dom Luis I bridge",
        "a francesinha, a hearty sandwich drowned in beer sauce",
        "Porto is hilly but compact, so walk and use the metro or the funicular for the climbs.",
        "May to September brings the most sunshine, though June gets busy during Sao Joao.",
        "Pack a light rain jacket, since Atlantic showers can roll in at any time of year.",
        "Ribeira is charming by the river, while Cedofeita is quieter and full of cafes.",
    ),
    D(
        "Barcelona",
        "the Sagrada Familia, booked ahead for a morning slot when the light is best",
        "tapas in the Gothic Quarter, especially pan con tomate and patatas bravas",
        "The metro covers almost everything, and a ten-ride card saves money.",
        "Late May, June and September give beach weather without the August crowds.",
        "Bring a cross-body bag with a zip, since pickpockets work the busy areas.",
        "The Eixample is central and calm, and El Born is lively with small bars.",
    ),
    D(
        "Madrid",
        "the Prado Museum, which is free in the last two hours most evenings",
        "a bocadillo de calamares near the Plaza Mayor and churros with thick chocolate",
        "The metro is clean, fast and cheap, and central Madrid is easy to walk.",
        "April to June and late September to October are pleasant; July and August are very hot.",
        "Pack something smart-casual, because people dress up for late dinners.",
        "Stay around Sol or La Latina to have the old town and tapas bars on your doorstep.",
    ),
    D(
        "Seville",
        "the Real Alcazar and its gardens, with tickets reserved online",
        "salmorejo, a cold tomato soup, and a plate of jamon iberico",
        "The historic center is best on foot, and the city bikes are handy along the river.",
        "Visit in March, April or November; summer afternoons can pass 40 degrees.",
        "Bring a hat, sunscreen and a refillable water bottle even in spring.",
        "Santa Cruz is the romantic old quarter, and Triana has great local bars.",
    ),
    D(
        "Paris",
        "the Musee d'Orsay and a stroll along the Seine to Notre-Dame",
        "a buttery croissant from a neighborhood boulangerie and a classic steak frites",
        "The metro reaches every corner, and a Navigo Easy card makes tickets painless.",
        "April to June and September to October bring mild weather and long evenings.",
        "Pack comfortable but stylish walking shoes and a light scarf for cool evenings.",
        "Le Marais is central and lively, and Saint-Germain is elegant and walkable.",
    ),
    D(
        "Rome",
        "the Pantheon, best seen early before the piazza fills up",
        "cacio e pepe or carbonara in a Trastevere trattoria",
        "Walk the historic center and use the metro or buses for longer hops.",
        "April, May and October are the sweet spot, warm enough without summer heat.",
        "Bring a scarf or shawl to cover your shoulders when visiting churches.",
        "Stay near Campo de' Fiori or Monti to walk to the main sights.",
    ),
    D(
        "Florence",
        "the Uffizi Gallery and the climb up Brunelleschi's dome",
        "a bistecca alla fiorentina to share and a lampredotto sandwich from a street stall",
        "Florence is small enough to walk everywhere, and cars are restricted in the center.",
        "Spring and autumn are lovely; book museums ahead whatever the season.",
        "Pack comfortable shoes, as you will walk many miles on stone streets.",
        "Santo Spirito across the river is relaxed and full of local restaurants.",
    ),
    D(
        "Venice",
        "St Mark's Square at dawn, before the day-trippers arrive",
        "cicchetti, small Venetian bites, with a glass of wine in a bacaro",
        "Get a vaporetto pass for the water buses and expect to get happily lost on foot.",
        "Late autumn and early spring are calmer; watch for high water in November.",
        "Pack light and bring a small suitcase, since you will carry it over bridges.",
        "Cannaregio is quieter and more local than the area around San Marco.",
    ),
    D(
        "Amsterdam",
        "the Rijksmuseum and an evening walk along the canal ring",
        "warm stroopwafels from a market and bitterballen with a local beer",
        "Rent a bike like the locals, or use the trams with a contactless card.",
        "April and May bring tulip season, while September is mild and less crowded.",
        "Bring a waterproof jacket, since rain showers come and go all year.",
        "The Jordaan is pretty and central, and De Pijp has a great market and cafes.",
    ),
    D(
        "Berlin",
        "the East Side Gallery and the Reichstag dome, which is free with a booking",
        "a currywurst from a street stand and a doner kebab in Kreuzberg",
        "The U-Bahn and S-Bahn run late and cover the whole city, so a day ticket pays off.",
        "May to September is best for beer gardens and lakes; winter has Christmas markets.",
        "Pack layers, because the weather can swing a lot within a single day.",
        "Mitte is central for sights, while Kreuzberg and Neukolln have the nightlife.",
    ),
    D(
        "Prague",
        "the Charles Bridge at sunrise and the climb up to Prague Castle",
        "svickova, beef in a creamy vegetable sauce with bread dumplings",
        "Trams are frequent and cheap, and the old town is easiest on foot.",
        "May and September are ideal; December is magical with its markets.",
        "Bring sturdy shoes for the steep cobbled streets up to the castle.",
        "Mala Strana is atmospheric, and Vinohrady is a calm, leafy base.",
    ),
    D(
        "Vienna",
        "Schonbrunn Palace and its gardens, followed by coffee in a grand cafe",
        "a Wiener schnitzel and a slice of Sachertorte",
        "The U-Bahn and trams are excellent, and a 72-hour pass covers most visitors.",
        "Spring and early autumn are pleasant, and Advent brings festive markets.",
        "Pack one smarter outfit if you plan to see a concert or the opera.",
        "The Innere Stadt puts you among the sights; Neubau is creative and relaxed.",
    ),
    D(
        "Budapest",
        "the thermal baths at Szechenyi and the Parliament building lit up at night",
        "goulash soup and a flaky langos topped with sour cream and cheese",
        "Trams 2 and 4-6 are scenic and practical, and the metro links both banks.",
        "April to June and September are the best, with mild weather for the baths outside.",
        "Bring a swimsuit and flip-flops for the baths.",
        "District VII is central and lively, and the Castle District is quieter at night.",
    ),
    D(
        "Copenhagen",
        "the colorful harbor at Nyhavn and the gardens of Tivoli",
        "smorrebrod, open-faced rye sandwiches, and a cinnamon pastry",
        "Rent a bike and use the bike lanes, or take the driverless metro from the airport.",
        "June to August has long, bright days; May and September are calmer.",
        "Pack a windproof jacket, because it can be breezy by the water.",
        "Vesterbro is trendy and central, and Christianshavn has canals and calm.",
    ),
    D(
        "Stockholm",
        "the Vasa Museum and a wander through the old town of Gamla Stan",
        "Swedish meatballs with lingonberries and a cardamom bun at fika time",
        "The metro doubles as an art gallery, and ferries connect the islands.",
        "Late May to early September is the best time, with very long daylight.",
        "Bring layers and a sleep mask for the bright summer nights.",
        "Sodermalm is hip and full of cafes, and Ostermalm is elegant and central.",
    ),
    D(
        "Edinburgh",
        "Edinburgh Castle and a hike up Arthur's Seat for the city view",
        "haggis, neeps and tatties, and a proper full Scottish breakfast",
        "The old town and new town are walkable, and the tram runs to the airport.",
        "May and June are mild; August is packed and pricey because of the festivals.",
        "Pack waterproof layers, as the weather changes several times a day.",
        "Stay in the new town for elegant streets within walking distance of everything.",
    ),
    D(
        "London",
        "the British Museum, which is free, and a walk along the South Bank",
        "a Sunday roast in a pub and curry on Brick Lane",
        "Tap a contactless card on the Tube and buses; daily caps keep costs down.",
        "Late spring and early autumn are mild and less crowded than midsummer.",
        "Always carry a compact umbrella, whatever the forecast says.",
        "South Kensington is great for museums, and Shoreditch is lively and creative.",
    ),
    D(
        "Dublin",
        "Trinity College's Long Room and a walk through St Stephen's Green",
        "a bowl of Irish stew and a fresh pint of stout",
        "The center is walkable, and the Luas tram and DART train cover the rest.",
        "May to September has the mildest weather and the longest evenings.",
        "Bring a rain jacket and a warm layer, even in summer.",
        "Stay near St Stephen's Green to be central without the Temple Bar noise.",
    ),
    D(
        "Reykjavik",
        "the Hallgrimskirkja church tower and a day trip along the Golden Circle",
        "a hot dog from the famous harbor stand and a bowl of Icelandic lamb soup",
        "The town is walkable, but rent a car or join a tour to see the countryside.",
        "Summer brings the midnight sun; September to March is the time for northern lights.",
        "Pack a waterproof shell, warm layers and a swimsuit for the geothermal pools.",
        "Stay near Laugavegur, the main street, to walk to restaurants and tours.",
    ),
    D(
        "Athens",
        "the Acropolis and its museum, with an early entry to dodge the heat",
        "souvlaki wrapped in pita and a Greek salad with good olive oil",
        "The metro is fast and links the airport, port and main sights.",
        "April to June and September to October are warm without the summer heat.",
        "Bring a hat, sunscreen and shoes with grip for the marble paths.",
        "Plaka and Koukaki are close to the Acropolis and easy to walk from.",
    ),
    D(
        "Istanbul",
        "the Hagia Sophia, the Blue Mosque and a ferry ride on the Bosphorus",
        "a simit from a street cart and a plate of kebab with grilled vegetables",
        "Get an Istanbulkart for trams, ferries and the metro.",
        "April, May, September and October are the most pleasant months.",
        "Pack a scarf for mosque visits and modest clothes that cover the knees.",
        "Sultanahmet is next to the big sights, and Karakoy is lively and stylish.",
    ),
    D(
        "Marrakesh",
        "the Jardin Majorelle and the square of Jemaa el-Fnaa at dusk",
        "a slow-cooked tagine and fresh mint tea",
        "Walk the medina and agree on taxi fares before you get in.",
        "March to May and October to November avoid the fierce summer heat.",
        "Pack light, loose clothes that cover shoulders and knees, plus a warm layer for nights.",
        "A riad inside the medina is the classic stay, quiet behind its walls.",
    ),
    D(
        "Cairo",
        "the Pyramids of Giza at opening time and the Grand Egyptian Museum",
        "koshari, a comforting mix of lentils, rice and pasta with tomato sauce",
        "Use ride-hailing apps for fixed prices, and the metro for central trips.",
        "October to April is the most comfortable time to visit.",
        "Bring sunscreen, a hat and modest clothing for mosques and old Cairo.",
        "Zamalek, on an island in the Nile, is calm, green and central.",
    ),
    D(
        "Cape Town",
        "Table Mountain, by cable car or on foot up Platteklip Gorge",
        "a braai with boerewors and fresh seafood at the harbor",
        "Use ride-hailing apps in the city and rent a car for the Cape Peninsula.",
        "November to March is summer, sunny and perfect for beaches.",
        "Pack a windbreaker, because the famous Cape Doctor wind can be strong.",
        "The City Bowl and Sea Point are central and close to the waterfront.",
    ),
    D(
        "Tokyo",
        "the Meiji Shrine and the crossing at Shibuya seen from above",
        "a bowl of ramen in a tiny counter shop and fresh sushi at Tsukiji Outer Market",
        "The trains are punctual and cover the city; a Suica card works on all of them.",
        "Late March to early April brings cherry blossoms, and November has autumn colors.",
        "Bring slip-on shoes, since you often take them off, and a small towel.",
        "Shinjuku and Shibuya are convenient hubs; Asakusa feels more traditional.",
    ),
    D(
        "Kyoto",
        "the red gates of Fushimi Inari, climbed early in the morning",
        "a multi-course kaiseki meal and matcha sweets in Gion",
        "Buses reach most temples, but the subway and a rented bike are often quicker.",
        "Spring and autumn are stunning, so book well ahead for those seasons.",
        "Pack socks without holes, as many temples ask you to remove your shoes.",
        "Stay near Kyoto Station for transport or in Gion for the old-town atmosphere.",
    ),
    D(
        "Seoul",
        "Gyeongbokgung Palace and the hillside lanes of Bukchon Hanok Village",
        "Korean barbecue with banchan side dishes and street-food tteokbokki",
        "The subway is excellent and signposted in English; get a T-money card.",
        "April to June and September to November are mild and clear.",
        "Bring comfortable shoes, as the city is hilly and you will walk a lot.",
        "Myeongdong is central for shopping, and Hongdae is young and lively.",
    ),
    D(
        "Bangkok",
        "the Grand Palace and Wat Pho, home of the giant reclining Buddha",
        "pad thai from a street stall and mango sticky rice for dessert",
        "Use the BTS Skytrain and river boats to beat the traffic.",
        "November to February is the coolest and driest time to visit.",
        "Pack light breathable clothes and something that covers shoulders for temples.",
        "Stay near the river for sights or along Sukhumvit for the Skytrain and nightlife.",
    ),
    D(
        "Singapore",
        "Gardens by the Bay and its Supertree light show in the evening",
        "chicken rice and chili crab at a hawker center",
        "The MRT is spotless and efficient, and a contactless card works on it directly.",
        "It is warm all year; February to April is usually a little drier.",
        "Pack light clothes and a light sweater for the strong air conditioning.",
        "Stay near Chinatown or the Marina Bay area to walk to many sights.",
    ),
    D(
        "Hanoi",
        "the Old Quarter streets and Hoan Kiem Lake in the early morning",
        "a steaming bowl of pho and bun cha, grilled pork with noodles",
        "Walk the Old Quarter and use ride-hailing apps for scooters or cars.",
        "October to December and March to April have pleasant temperatures.",
        "Bring a light rain jacket and a mask for busy, dusty streets.",
        "The Old Quarter is central and lively; the French Quarter is calmer.",
    ),
    D(
        "Bali",
        "the rice terraces of Tegallalang and the sea temple at Uluwatu at sunset",
        "nasi goreng and babi guling, Balinese roast pork",
        "Hire a private driver for day trips, since public transport is limited.",
        "April to October is the dry season and the best time to visit.",
        "Pack a sarong for temple visits and strong insect repellent.",
        "Ubud is great for culture and greenery, and Canggu for surf and cafes.",
    ),
    D(
        "Sydney",
        "the Opera House and the coastal walk from Bondi to Coogee",
        "a flat white in a local cafe and fish and chips by the harbor",
        "Tap a contactless card on trains, buses and the ferries across the harbor.",
        "September to November and March to May are warm but not scorching.",
        "Bring strong sunscreen and a hat; the sun is intense even on cloudy days.",
        "The Rocks and Circular Quay are central, and Bondi is great for beach lovers.",
    ),
    D(
        "Queenstown",
        "a cruise on Milford Sound and the gondola ride above the town",
        "a famous Fergburger and a glass of Central Otago pinot noir",
        "Rent a car to explore the region, as buses between towns are infrequent.",
        "December to February is best for hiking; June to August is ski season.",
        "Pack layers and waterproof gear, because mountain weather changes fast.",
        "Stay in the town center to walk to the lake, restaurants and tour pickups.",
    ),
    D(
        "Vancouver",
        "Stanley Park, circled by bike along the seawall",
        "fresh sushi and wild salmon at Granville Island market",
        "The SkyTrain and buses are reliable, and the seawall is perfect for cycling.",
        "June to September is dry and sunny, ideal for the outdoors.",
        "Pack a rain jacket outside of summer and good shoes for trails.",
        "The West End is close to Stanley Park and full of restaurants.",
    ),
    D(
        "New York",
        "Central Park and the view from the Brooklyn Bridge at sunset",
        "a classic New York slice of pizza and a bagel with cream cheese",
        "The subway runs 24 hours; tap a contactless card or phone at the gate.",
        "Late spring and autumn are the most comfortable times to visit.",
        "Bring comfortable shoes, because you will walk much more than you expect.",
        "Midtown is central for first-timers, and the West Village is charming.",
    ),
    D(
        "New Orleans",
        "the French Quarter and live jazz on Frenchmen Street",
        "beignets dusted with sugar and a bowl of gumbo",
        "Ride the St Charles streetcar and walk the French Quarter.",
        "February to May is pleasant and lively, with Mardi Gras and spring festivals.",
        "Pack light clothes for the humidity and an umbrella for sudden storms.",
        "The Garden District is quieter and beautiful, close to the streetcar.",
    ),
    D(
        "Mexico City",
        "the Museo Nacional de Antropologia and a boat on the canals of Xochimilco",
        "tacos al pastor from a street stand and churros at a classic churreria",
        "The metro is cheap but crowded; ride-hailing apps are easy and safe.",
        "March to May is warm and dry, before the afternoon rains of summer.",
        "Bring layers, since mornings are cool at altitude and afternoons warm up.",
        "Roma and Condesa are leafy, walkable and full of great restaurants.",
    ),
    D(
        "Cusco",
        "the stone walls of Sacsayhuaman and the train to Machu Picchu",
        "lomo saltado and a cup of coca tea for the altitude",
        "Walk the center slowly at first, and take taxis or tours to the ruins.",
        "May to September is the dry season and the best time for trekking.",
        "Pack warm layers for cold nights and sunscreen for the strong high-altitude sun.",
        "San Blas is an artsy hillside area close to the main square.",
    ),
    D(
        "Buenos Aires",
        "the Recoleta Cemetery and a tango show in San Telmo",
        "a steak at a parrilla and dulce de leche in everything",
        "Use the Subte metro and buses with a SUBE card, or take a taxi at night.",
        "March to May and September to November are mild and pleasant.",
        "Pack something nice for dinner, since locals dine late and dress well.",
        "Palermo is green and full of restaurants, and Recoleta is elegant.",
    ),
)

_TOPICS = ("sight", "food", "transport", "season", "pack", "area")

# Several phrasings per topic; `{name}` is the destination, `{fact}` the table entry.
_QUESTIONS: dict[str, tuple[str, ...]] = {
    "sight": (
        "What's a must-see in {name}?",
        "What should I not miss in {name}?",
        "I have one day in {name}. What should I see?",
        "What's the top sight in {name} for a first-time visitor?",
    ),
    "food": (
        "What should I eat in {name}?",
        "What's a local dish I have to try in {name}?",
        "Any food recommendations for {name}?",
        "What do people eat in {name}?",
    ),
    "transport": (
        "How do I get around {name}?",
        "What's the easiest way to get around {name}?",
        "Any tips for getting around {name}?",
    ),
    "season": (
        "When is the best time to visit {name}?",
        "What's the best season for {name}?",
        "When should I plan a trip to {name}?",
    ),
    "pack": (
        "What should I pack for {name}?",
        "Any packing tips for {name}?",
        "What should I bring on a trip to {name}?",
    ),
    "area": (
        "Where should I stay in {name}?",
        "Which neighborhood in {name} is good for a first visit?",
        "What's a good area to stay in {name}?",
    ),
}
_ANSWERS: dict[str, tuple[str, ...]] = {
    "sight": (
        "A must-see in {name} is {fact}. It's the moment most visitors remember.",
        "Don't miss {fact}. Go early to enjoy it before the crowds.",
        "Put {fact} at the top of your list - it's classic {name}.",
    ),
    "food": (
        "Try {fact}. It's a delicious taste of {name}.",
        "You have to try {fact}! Ask locals where their favorite spot is.",
        "In {name}, go for {fact}. Your taste buds will thank you.",
    ),
    "transport": ("{fact}", "Good question! {fact}", "{fact} That keeps things simple."),
    "season": ("{fact}", "{fact} Book early if your dates are fixed.", "Great question. {fact}"),
    "pack": ("{fact}", "{fact} Have a wonderful trip!", "Good thinking to plan ahead. {fact}"),
    "area": ("{fact}", "{fact} It makes an easy base for exploring.", "For a first visit: {fact}"),
}


def sample_pairs() -> list[dict[str, str]]:
    """About 200 prompt/response pairs, the same on every call and every machine."""
    pairs = []
    for d_index, dest in enumerate(DESTINATIONS):
        skipped = _TOPICS[(d_index + 5) % len(_TOPICS)]  # five topics per place keeps it ~200 pairs
        for t_index, topic in enumerate(_TOPICS):
            if topic == skipped:
                continue
            questions, answers = _QUESTIONS[topic], _ANSWERS[topic]
            question = questions[(d_index * 7 + t_index) % len(questions)]
            answer = answers[(d_index + 2 * t_index) % len(answers)]
            fact = getattr(dest, topic)
            pairs.append(
                {
                    "prompt": question.format(name=dest.name),
                    "response": answer.format(name=dest.name, fact=fact),
                }
            )
    return pairs


def sample_rows(kind: str = "travel", count: int | None = None, seed: int = 0) -> list[Any]:
    """The rows of one sample kind: travel pairs, tool rows (400 by default) or preference
    pairs."""
    from slmforge.data.sample_preference import preference_rows
    from slmforge.data.sample_tools import tool_rows

    if kind == "tools":
        return tool_rows(count or 400, seed)
    if kind == "preference":
        return preference_rows(count, seed)
    return sample_pairs()


def write_sample(
    path: str | Path,
    force: bool = False,
    kind: str = "travel",
    count: int | None = None,
    seed: int = 0,
) -> Path:
    """Write the sample set as jsonl (atomically): the travel prompt/response pairs, `count`
    function-calling rows (`data/sample_tools.py`) or preference pairs (`preference_rows`)."""
    rows = sample_rows(kind, count, seed)
    final = Path(path)
    with atomic_file(final, force=force) as temp, open(temp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return final
