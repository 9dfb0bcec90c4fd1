"""DICOM PS3.15 Table E.1-1, the attributes of the Basic Application Level Confidentiality
Profile, as data: one cell per attribute, ``TAG ACTION [OPTIONS]``, sorted by tag.

ACTION is the Basic Profile's code as the standard prints it:
  X remove · Z empty (or a dummy) · D dummy value · U a UID mapped consistently ·
  X/Z, X/D, Z/D, X/Z/D, X/Z/U* the choices the standard leaves to the conformance of the IOD.
OPTIONS are the letters of the options that change the action (``core.sharing.deidentify``
reads them):
  t  Retain Longitudinal Temporal Information with Full Dates (the attribute is kept)
  v  Retain Device Identity (kept)          i  Retain Institution Identity (kept)
  p  Retain Patient Characteristics (kept)  P  Retain Patient Characteristics (cleaned)
  d  Clean Descriptors (cleaned)            s  Clean Structured Content
  g  Clean Graphics
Rows the table gives by pattern are rules in ``deidentify``: private attributes (odd groups),
curve data (50xx,xxxx) and overlays (60xx,xxxx) are removed.
"""
from __future__ import annotations

TABLE_E1_1 = """
00001000 X        00001001 U        00020003 U        00041511 U
00080014 U        00080015 X t      00080018 U        00080020 Z t
00080021 X/D t    00080022 X/Z t    00080023 Z/D t    00080024 X t
00080025 X t      0008002A X/Z/D t  00080030 Z t      00080031 X/D t
00080032 X/Z t    00080033 Z/D t    00080034 X t      00080035 X t
00080050 Z        00080058 U        00080080 X/Z/D i  00080081 X i
00080082 X/Z/D i  00080090 Z        00080092 X        00080094 X
00080096 X        0008009C Z        0008009D X        00080201 X t
00081010 X/Z/D v  00081030 X d      0008103E X d      00081040 X i
00081041 X i      00081048 X        00081049 X        00081050 X
00081052 X        00081060 X        00081062 X        00081070 X/Z/D
00081072 X/D      00081080 X d      00081084 X d      00081110 X/Z
00081111 X/Z/D    00081120 X        00081140 X/Z/U*   00081155 U
00081195 U        00082111 X d      00082112 X/Z/U*   00083010 U
00084000 X d      00100010 Z        00100020 Z        00100021 X
00100030 Z        00100032 X        00100040 Z p      00100050 X
00100101 X        00100102 X        00101000 X        00101001 X
00101002 X        00101005 X        00101010 X p      00101020 X p
00101030 X p      00101040 X        00101050 X        00101060 X
00101080 X        00101081 X        00101090 X        00101100 X
00102000 X d      00102110 X Pd     00102150 X        00102152 X
00102154 X        00102155 X        00102160 X p      00102180 X d
001021A0 X p      001021B0 X d      001021C0 X p      001021D0 X t
001021F0 X        00102203 X/Z p    00102297 X        00102299 X
00104000 X d      00120010 D        00120020 D        00120021 Z
00120030 Z i      00120031 Z i      00120040 D        00120042 D
00120050 Z        00120051 X d      00120060 Z i      00120071 X
00120072 X d      00120081 D i      00120082 X        0016002B X d
0016004B X d      0016004D X        0016004E X v      0016004F X v
00160050 X v      00160051 X v      00160070 X        00160071 X
00160072 X        00160073 X        00160074 X        00160075 X
00160076 X        00160077 X        00160078 X        00160079 X
0016007A X        0016007B X        0016007C X        0016007D X
0016007E X        0016007F X        00160080 X        00160081 X
00160082 X        00160083 X        00160084 X        00160085 X
00160086 X        00160087 X        00160088 X        00160089 X
0016008A X        0016008B X        0016008C X        0016008D X t
0016008E X        00180010 Z/D d    00181000 X/Z/D v  00181002 U v
00181004 X v      00181005 X v      00181007 X v      00181008 X v
00181009 X v      0018100A X v      0018100B U v      00181030 X/D d
001811BB D d      00181400 X/D d    00182042 U        00184000 X d
00185011 X v      0018700A X/D v    00189185 X d      00189367 D v
00189369 D t      0018936A D t      00189371 D v      00189373 X v
0018937B X d      0018937F X d      00189424 X d      00189516 X/D t
00189517 X/D t    00189937 X d      0018A003 X d      0020000D U
0020000E U        00200010 Z        00200052 U        00200200 U
00203401 X        00203406 X        00204000 X d      00209158 X d
00209161 U        00209164 U        00281199 U        00281214 U
00284000 X        00320012 X        00321020 X v      00321021 X v
00321030 X d      00321032 X        00321033 X        00321060 X/Z d
00321066 X d      00321067 X d      00321070 X d      00324000 X d
00340001 D        00340002 D        00340005 D        00340007 D t
00380004 X        00380010 X        00380011 X        00380014 X
0038001E X        00380020 X t      00380021 X t      00380040 X d
00380050 X P      00380060 X        00380061 X        00380062 X d
00380064 X        00380300 X        00380400 X        00380500 X Pd
00384000 X d      003A0310 U        003A0314 D t      00400001 X v
00400002 X t      00400003 X t      00400004 X t      00400005 X t
00400006 X        00400007 X d      00400009 X        0040000B X
00400010 X v      00400011 X v      00400012 X P      00400241 X v
00400242 X v      00400243 X        00400244 X t      00400245 X t
00400250 X t      00400251 X t      00400253 X        00400254 X d
00400275 X d      00400280 X d      00400310 X d      0040050A X
00400512 D        00400513 Z        0040051A X d      00400551 D
00400554 U        00400555 X/Z s    00400562 Z        00400600 X d
00400602 X d      00400610 Z s      004006FA X        00401001 X
00401002 X d      00401004 X        00401005 X        0040100A X d
00401010 X        00401011 X        00401101 D        00401102 X
00401103 X        00401104 X        00401400 X d      00402001 X d
00402008 X        00402009 X        00402010 X        00402011 X
00402016 Z        00402017 Z        00402400 X d      00403001 X
00404005 X t      00404008 X t      00404010 X t      00404011 X t
00404023 U        00404025 X v      00404027 X v      00404028 X v
00404030 X v      00404034 X        00404035 X        00404036 X
00404037 X        00404050 X t      00404051 X t      00404052 X t
0040A027 D        0040A073 D        0040A075 D        0040A078 X
0040A07A X        0040A07C X        0040A088 Z        0040A123 D
0040A124 U        0040A171 U        0040A172 U        0040A192 X t
0040A193 X t      0040A307 X        0040A352 X        0040A353 X
0040A354 X        0040A358 X        0040A402 U        0040A730 D s
0040DB0C U        0040DB0D U        0050001B X        00500020 X v
00500021 X d      00620021 U        00700001 D g      00700084 Z/D
00700086 X        0070031A U        00701101 U        00701102 U
00880140 U        00880200 X        00880904 X        00880906 X
00880910 X        00880912 X        04000100 U        04000402 X
04000403 X        04000404 X        04000550 X        04000551 X
04000552 X        04000561 X        04000600 X        20300020 X
22000002 X/Z d    22000005 X/Z      30060002 D d      30060004 X d
30060006 X d      30060008 Z t      30060009 X/D t    30060024 U
30060026 Z d      30060028 X d      30060038 X d      30060085 X d
30060088 X d      300600A6 Z        300600C2 U        30080054 X/D t
30080056 X/D t    30080105 X/Z v    30080250 X/D t    30080251 X/D t
300A0002 D d      300A0003 X d      300A0004 X d      300A0006 X/D t
300A0007 X/D t    300A000E X d      300A0013 U        300A0016 X d
300A0072 X d      300A0083 U        300A00B2 X v      300A00C3 X d
300A00DD X d      300A0196 X d      300A01A6 X d      300A01B2 X d
300A0216 X v      300A02EB X d      300A0608 D d      300A0609 U
300A0611 Z        300A0615 Z        300A0619 D d      300A0623 D d
300A062A D d      300A0650 U        300A0676 X d      300A067C D d
300A067D Z d      300A0700 U        300A0734 D d      300A0736 D t
300A073A D t      300A0741 D t      300A0742 D d      300A0760 D t
300A0783 D d      300C0113 X d      300E0008 X/Z      30100006 U
3010000B U        3010000F Z d      30100013 U        30100015 U
30100017 Z d      3010001B Z        3010002D D v      30100031 U
30100033 D d      30100034 D d      30100035 D d      30100036 X d
30100037 X d      30100038 D d      3010003B U        30100043 Z v
3010004C X/D t    3010004D X/D t    30100054 D d      30100056 X/D d
3010005A Z d      3010005C Z d      30100061 X d      3010006E U
3010006F U        30100077 D d      3010007A Z d      3010007B Z d
3010007F Z d      30100081 Z d      40000010 X        40004000 X
40080042 X        40080102 X        4008010A X        4008010B X d
4008010C X        40080111 X        40080114 X        40080115 X d
40080118 X        40080119 X        4008011A X        40080202 X
40080300 X d      40084000 X d      FFFAFFFA X        FFFCFFFC X
"""


def parse(text: str = TABLE_E1_1) -> dict[int, tuple[str, str]]:
    """{tag: (action, option letters)} of the table."""
    found: dict[int, tuple[str, str]] = {}
    for line in text.splitlines():
        words = line.split()
        while words:
            tag, action = words[0], words[1]
            options = words[2] if len(words) > 2 and not _is_tag(words[2]) else ""
            found[int(tag, 16)] = (action, options)
            words = words[3 if options else 2:]
    return found


def _is_tag(word: str) -> bool:
    return len(word) == 8 and all(character in "0123456789ABCDEF" for character in word)


ATTRIBUTES = parse()
