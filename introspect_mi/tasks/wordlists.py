"""Vocabularies the generated tasks draw from: single lowercase words, no duplicates.

ANIMALS, COLOURS and COUNTRIES are mutually disjoint (e.g. "turkey" is only a country), so a
"Which of these is an animal?" question has exactly one right option.
"""

from __future__ import annotations


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


ANIMALS: tuple[str, ...] = _words("""
    dog cat cow pig horse sheep goat chicken duck rabbit mouse rat deer fox wolf bear lion
    tiger elephant giraffe zebra monkey kangaroo koala panda squirrel snake lizard turtle frog
    shark whale dolphin owl eagle penguin camel donkey hamster otter
""")

COLOURS: tuple[str, ...] = _words("""
    red orange yellow green blue purple pink brown black white gray silver gold beige ivory
    cream tan khaki olive lime mint teal turquoise cyan aqua navy indigo violet lavender lilac
    magenta fuchsia maroon burgundy crimson scarlet ruby coral peach apricot amber saffron
    mustard ochre bronze copper rust sienna umber chocolate coffee mocha caramel chestnut
    mahogany charcoal slate pewter ash jade emerald moss sage pistachio chartreuse celadon
    cobalt sapphire azure cerulean periwinkle plum mauve orchid wisteria eggplant puce taupe
    sepia sand champagne vanilla lemon tangerine pumpkin cherry raspberry strawberry rose blush
    salmon cinnamon honey butterscotch brass gunmetal glacier sky denim royal midnight cranberry
""")

COUNTRIES: tuple[str, ...] = _words("""
    afghanistan albania algeria andorra angola argentina armenia australia austria azerbaijan
    bahamas bahrain bangladesh barbados belarus belgium belize benin bhutan bolivia botswana
    brazil brunei bulgaria burundi cambodia cameroon canada chad chile china colombia comoros
    croatia cuba cyprus denmark djibouti dominica ecuador egypt eritrea estonia eswatini
    ethiopia fiji finland france gabon gambia georgia germany ghana greece grenada guatemala
    guinea guyana haiti honduras hungary iceland india indonesia iran iraq ireland israel italy
    jamaica japan jordan kazakhstan kenya kiribati kuwait kyrgyzstan laos latvia lebanon lesotho
    liberia libya liechtenstein lithuania luxembourg madagascar malawi malaysia maldives mali
    malta mauritania mauritius mexico micronesia moldova monaco mongolia montenegro morocco
    mozambique myanmar namibia nauru nepal netherlands nicaragua niger nigeria norway oman
    pakistan palau panama paraguay peru philippines poland portugal qatar romania russia rwanda
    samoa senegal serbia seychelles singapore slovakia slovenia somalia spain sudan suriname
    sweden switzerland syria taiwan tajikistan tanzania thailand togo tonga tunisia turkey
    turkmenistan tuvalu uganda ukraine uruguay uzbekistan vanuatu venezuela vietnam yemen
    zambia zimbabwe
""")

ENGLISH_WORDS: tuple[str, ...] = _words("""
    about above across act add afraid after again age ago agree air all allow almost alone
    along already also always among amount anger animal answer any appear apple area arm army
    around arrive art ask attack aunt autumn away baby back bad bag ball band bank base basket
    bath bean beauty bed bell belong below bench best better between bird birth bit bite bitter
    blade blood board boat body boil bone book border bottle bottom bowl box boy brain branch
    brave bread break breath brick bridge bright bring broad brother brush bucket build burn
    business busy butter button buy cake call calm camp candle cap captain card care carry case
    castle catch cause cellar chain chair chalk chance change cheap cheese chest chief child
    church circle city claim class clean clear climb clock close cloth cloud coat cold collar
    comb come common cook copy corn corner cost cotton cough count country course cover crack
    cream crowd cry cup curtain curve cushion damage dance danger dark daughter day dear death
    debt decide deep degree desert desire detail develop dinner direct dirty discover dish
    distance divide door doubt down drain draw dream dress drink drive drop dry dust ear early
    earth east easy edge effect egg engine enough equal error even evening event exact example
    expert eye face fact fail fall family famous farm fast father fear feather feel fence field
    fight finger fire first flag flame floor flower fly fold food foot force forest forget fork
    form frame free friend front fruit full future game garden gate gentle gift girl give glass
    glove goal good grain grass great grip ground group grow guide gun hair hammer hand happy
    harbor hard harvest hat head health heart heat heavy help high hill history hole hollow home
    honest hook hope horn hospital hour house human humor hunger hurry ice idea inch ink insect
    island jelly jewel join journey judge jump kettle key kind king kiss kitchen knee knife knot
    lake lamp land language large laugh lead leaf learn leather left leg letter level library
    light limit line linen lip liquid list little lock long loose loud love low machine magic
    map mark market mass meal measure meat meeting memory metal middle milk mind minute mirror
    mist money month moon morning mother motion mountain mouth music nail name narrow nation
    near neck needle nerve nest net news night noise north nose note number nut ocean offer
    office oil open opinion order oven owner page pain paint paper parcel part paste path peace
    pen pencil people pepper person picture piece pin pipe place plane plant plate play pocket
    point polish poor potato powder power price print prison prize problem profit public pull
    pump punish push quality quarter queen question quick quiet rail rain range rate ray reason
    receipt record relief rest reward rhythm rice ring river road rock roll roof room root rope
    rough round rule safe sail salt sand school science scissors screw sea seat secret seed
    shade shadow shape share sharp shelf shell ship shirt shoe side sign silk simple sister
    size skin skirt sleep slope small smell smile smoke snow soap sock soft soldier song sound
    soup south space spade sponge spoon spring square stage stamp star start station steam steel
    stem step stick stitch stone store storm story street strong sugar summer sun support
    surprise sweet swim table tail talk taste teacher tent test theory thing thread throat
    thumb ticket time tired toe tongue tooth top touch town trade train tray tree trick trouble
    truth turn twist umbrella uncle under unit value verse vessel voice walk wall war warm wash
    watch water wave wax way weather week weight wheel whip whistle wide wind window wine wing
    winter wire wise woman wood wool word work world wound wrist writer yard year young zero
""")
