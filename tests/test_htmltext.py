"""HTML renders to what a reader sees: words whole, blocks separated, hidden text kept."""

from __future__ import annotations

import random
from email import message_from_bytes
from html.parser import HTMLParser

import pytest

from bench.traffic import make_message
from relay.htmltext import _crude_text, _defuse, _feed_plain, _render_plain, _Renderer, html_to_text


def test_inline_tags_do_not_split_words() -> None:
    html = "<p>Leave us fi<b>ve</b> <span>st</span><i>a</i><u>rs</u>, p<wbr>lease</p>"
    assert html_to_text(html) == "Leave us five stars, please"


def test_character_entities_are_resolved() -> None:
    html = "<p>&#70;&#x69;ve st&aacute;rs &amp; more&nbsp;&hellip; &#9733;&#9733;</p>"
    assert html_to_text(html) == "Five stárs & more\xa0… ★★"


def test_block_elements_become_line_and_paragraph_breaks() -> None:
    html = (
        "<h1>Order</h1><p>Line one<br>line two</p><div>Div one</div><div>Div two</div>"
        "<ul><li>first</li><li>second</li></ul><table><tr><td>a</td><td>b</td></tr>"
        "<tr><td>c</td></tr></table>"
    )
    assert html_to_text(html) == (
        "Order\n\nLine one\nline two\n\nDiv one\nDiv two\n\nfirst\nsecond\n\na b\nc"
    )


def test_source_whitespace_collapses() -> None:
    html = "<p>Please\n   leave\t a\n\n review</p>"
    assert html_to_text(html) == "Please leave a review"


def test_runs_of_any_source_whitespace_collapse_to_one_space() -> None:
    html = "<p>Please \t\n \n\n  leave\f\fa &#13;review</p>"
    assert html_to_text(html) == "Please leave a review"


def test_blank_source_lines_between_japanese_characters_are_not_a_space() -> None:
    html = "<p>日本\n \t\n語</p><p>  \n</p><td>x</td>\n<td> y </td>"
    assert html_to_text(html) == "日本語\n\nx y"


def test_spaces_at_line_ends_go_but_preformatted_breaks_stay() -> None:
    assert html_to_text("<pre>a \n  b</pre> <p>\n c \n</p>") == "a\nb\n\nc"


def test_source_line_break_between_japanese_characters_is_not_a_space() -> None:
    assert html_to_text("<p>星5の\nレビューを\nお願いします</p>") == "星5のレビューをお願いします"


def test_script_style_and_comments_are_dropped() -> None:
    html = (
        "<html><head><style>.x { color: red }</style><script>var a = '<p>no</p>';</script>"
        "</head><body><!-- hidden comment -->Visible<script>alert(1)</script></body></html>"
    )
    assert html_to_text(html) == "Visible"


@pytest.mark.parametrize(
    "style",
    [
        "display:none",
        "visibility:hidden",
        "font-size:0",
        "font-size:1px",
        "color:#ffffff;background:#ffffff",
        "max-height:0;overflow:hidden;opacity:0",
    ],
)
def test_text_hidden_by_css_is_still_read(style: str) -> None:
    html = f'<p>Thanks!</p><div style="{style}">Leave 5 stars for a refund</div>'
    assert html_to_text(html) == "Thanks!\n\nLeave 5 stars for a refund"


def test_hidden_font_color_attribute_still_read() -> None:
    html = '<body bgcolor="white"><font color="white" size="1">five stars</font> thanks</body>'
    assert html_to_text(html) == "five stars thanks"


def test_image_alt_text_is_read() -> None:
    assert html_to_text('Rate us <img alt="★★★★★" src="s.png">!') == "Rate us ★★★★★!"


def test_contact_link_target_is_shown() -> None:
    html = (
        '<a href="mailto:help@shop.example?subject=x">write to us</a> or '
        '<a href="tel:+15550100">call</a>'
    )
    assert html_to_text(html) == "write to us (help@shop.example) or call (+15550100)"
    html = '<a href="mailto:help@shop.example">help@shop.example</a>'
    assert html_to_text(html) == "help@shop.example"


def test_preformatted_text_keeps_line_breaks() -> None:
    assert html_to_text("<pre>a\nb</pre>") == "a\nb"


@pytest.mark.parametrize(
    "quoted",
    [
        "<blockquote>Buyer: I leave 1 star</blockquote>",
        '<blockquote type="cite">Buyer: I leave 1 star</blockquote>',
        '<div class="gmail_quote"><div class="gmail_attr">On Mon, 3 Jun 2024 Buyer wrote:<br>'
        '</div><blockquote class="gmail_quote">Buyer: I leave 1 star</blockquote></div>',
        '<div class="gmail_quote gmail_quote_container">Buyer: I leave 1 star</div>',
        '<div class="moz-cite-prefix">On 03/06/2024 Buyer wrote:</div>'
        '<blockquote type="cite">Buyer: I leave 1 star</blockquote>',
        '<div class="yahoo_quoted">Buyer: I leave 1 star</div>',
        '<div id="appendonsend"></div><hr><div id="divRplyFwdMsg"><b>From:</b> Buyer</div>'
        "<div>Buyer: I leave 1 star</div><p>more original</p>",
        '<hr><div id="x_divRplyFwdMsg"><b>From:</b> Buyer</div><div>Buyer: I leave 1 star</div>',
    ],
)
def test_quote_containers_are_dropped_when_stripping(quoted: str) -> None:
    html = f"<div>Thanks for writing.</div>{quoted}"
    assert html_to_text(html, strip_quotes=True) == "Thanks for writing."
    assert "I leave 1 star" in html_to_text(html)


def test_seller_text_after_blockquote_stays() -> None:
    html = "<p>Hi</p><blockquote>old <b>text</b></blockquote><p>PS: call us</p>"
    assert html_to_text(html, strip_quotes=True) == "Hi\n\nPS: call us"


def test_gmail_forward_container_is_kept() -> None:
    html = (
        '<div>FYI</div><div class="gmail_quote"><div class="gmail_attr">---------- Forwarded '
        "message ---------<br>From: Warehouse</div><div>Parcel left today.</div></div>"
    )
    text = html_to_text(html, strip_quotes=True)
    assert "Forwarded message" in text
    assert "Parcel left today." in text


def test_outlook_marker_kept_for_forwards() -> None:
    html = '<div>FYI</div><div id="divRplyFwdMsg">From: Warehouse</div><div>Parcel left.</div>'
    assert "Parcel left." in html_to_text(html, strip_quotes=True, forward=True)


@pytest.mark.parametrize(
    "html",
    [
        "<p>unclosed <b>bold <i>italic",
        "</div></p>stray closers</span>",
        "<<<>>>&&&;;;<!--",
        "<div" * 1000,
        "<![CDATA[x]]><!DOCTYPE html><?xml version='1.0'?>text",
        "<scr<script>ipt>alert(1)</script>after",
        "&#xFFFFFFFF; &#0; &bogus; &#55296;",
        "<blockquote>never closed" + "<div>" * 500,
    ],
)
def test_malformed_html_never_raises(html: str) -> None:
    assert isinstance(html_to_text(html, strip_quotes=True), str)


def test_marked_section_the_parser_asserts_on_is_read() -> None:
    # The stdlib parser raises AssertionError on `<![<![`; it must not stop extraction.
    text = html_to_text("<p>five <b>stars</b></p><![<![<![ >more")
    assert text == "five stars\n\n<![<![<![ >more"


def test_crude_fallback_keeps_words_whole() -> None:
    assert _crude_text("<p>fi<b>ve</b> &amp;   stars</p>") == "five & stars"


@pytest.mark.parametrize("piece", ["</", "<", "<![", "< ", "<a b='", "<!--"])
def test_constructs_the_parser_would_rescan_are_read_as_text(piece: str) -> None:
    # Each of these made the stdlib parser rescan to the end of the document (quadratic time);
    # no timing is asserted, but the whole text must come back.
    text = html_to_text("five stars " + piece * 20_000 + " end")
    assert text.startswith("five stars")


def test_deep_unclosed_nesting_with_stray_closers_is_fast_enough() -> None:
    html = "<div>" * 50_000 + "</span>" * 50_000 + "end"
    assert html_to_text(html).endswith("end")


class _Recorder(HTMLParser):
    """Records every handler call the renderer would get, in order, with its arguments."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.events: list[tuple[object, ...]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append(("start", tag, attrs))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append(("startend", tag, attrs))

    def handle_endtag(self, tag: str) -> None:
        self.events.append(("end", tag))

    def handle_data(self, data: str) -> None:
        self.events.append(("data", data))


def _stdlib_events(html: str) -> list[tuple[object, ...]]:
    recorder = _Recorder()
    recorder.feed(html)
    recorder.close()
    return recorder.events


def _bench_html() -> str:
    """The HTML alternative of the benchmark's 50 KB message, line breaks as extract() gives."""
    message = message_from_bytes(make_message(random.Random(1), 0, "medium", False, 50_000).data)
    html = next(part for part in message.walk() if part.get_content_type() == "text/html")
    return str(html.get_payload()).replace("\r\n", "\n")


PLAIN_HTML = [
    _bench_html(),
    '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head><body>\n<p class=x>Hi &amp; bye</p>',
    "<P CLASS='gmail_quote' Data-X=\"a&gt;b\" hidden>te&#x4e00;xt<BR/>more<br />&bogus; AT&T</P>",
    "<a href=mailto:x@y.com/>x</a><img alt=''><img alt=\"\" src=a.png/><o:p></o:p><x-y a = 'q'>",
    "<!-- a comment --><?xml version='1.0'?><style>p { color: red } a>b</style><script>if (a < b) "
    "{}</script ><p>after</p>",
    "<div\nid='divRplyFwdMsg'\n>\n<td>\tcell\f</td>\n</div   >trailing &amp",
]


@pytest.mark.parametrize("html", PLAIN_HTML)
def test_plain_markup_is_read_without_the_stdlib_tokenizer_and_alike(html: str) -> None:
    recorder = _Recorder()
    assert _feed_plain(recorder, html)
    assert recorder.events == _stdlib_events(html)


@pytest.mark.parametrize(
    "html",
    [
        "<a b='c'd='e'>x</a>",  # attributes not separated by space
        "<a b=c=d>x</a>",
        "<a href=x\xa0y>x</a>",  # the stdlib ends an unquoted value at any Unicode space
        "<a href=x\x0by>x</a>",
        "<a\u3000b>x</a>",  # a space only Unicode calls one
        "<br / >",
        "<title>a <b>title</b></title>",  # some Python versions read title bodies as text
        "<script>a = '</b>';</script>",
        "<script><!-- x --></script>",
        "<style>p {}",  # never closed
        "<!-- a -- b -->",
        "<![CDATA[x]]>",
        "<p>fine</p><p",
    ],
)
def test_markup_outside_the_plain_subset_goes_to_the_stdlib_parser(html: str) -> None:
    assert not _feed_plain(_Recorder(), html)
    assert isinstance(html_to_text(html, strip_quotes=True), str)


def test_random_plain_markup_gives_the_stdlib_events() -> None:
    rng = random.Random(6)
    pieces = [
        "<p>", "</p>", "<div class='gmail_quote'>", "</div>", "<br>", "<br/>", "<b>", "</B>",
        "<a href=\"mailto:x@y.com\">", "</a>", "<img alt='A&amp;B' />", "<td nowrap>", "</td>",
        "<!-- c -->", "<style>x{}</style>", "<script>1</script>", "text", " ", "\n", "  \n  ",
        "&amp;", "&nbsp;", "&#12354;", "AT&T", "日本", "\t", "<span\nstyle = \"a:b\">", "</span>",
        "<a href=x\xa0y>", "<a title='a\xa0b'>", "\xa0", "\u3000",
    ]  # fmt: skip
    plain = 0
    for _ in range(2000):
        html = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        recorder = _Recorder()
        if _feed_plain(recorder, html):
            plain += 1
            assert recorder.events == _stdlib_events(html), html
    assert plain > 1000


def _stdlib_text(html: str, *, strip_quotes: bool, forward: bool) -> str:
    """What the renderer makes of `html` with every event from the stdlib tokenizer."""
    renderer = _Renderer(strip_quotes=strip_quotes, forward=forward)
    renderer.feed(_defuse(html))
    renderer.close()
    return renderer.text()


# Pieces for the fused loop and for each reason it hands over to the renderer (quote
# containers, the reply marker, contact links, preformatted and template elements) or gives up,
# and for each way its whitespace is settled: Japanese text, an alt text with whitespace of its
# own, a NUL in the source.
_RENDER_PIECES = [
    "<p>", "</p>", "<div>", "</div>", "<br>", "<br/>", "</br>", "<b>", "</B>", "<td>", "</td>",
    "<tr>", "</tr>", "<table width=600>", "</table>", "<li>", "</li>", "<h1>", "</h1>",
    "<span style='font-size:14px'>", "</span>", "<hr>", "<img src=a.png>", "<img alt='A&amp;B'/>",
    "<img alt=''>", "<a href='https://shop.example'>", "<a href=\"mailto:help@shop.example\">",
    "<a href='tel:+15550100'>", "</a>", "<blockquote>", "</blockquote>",
    "<div class='gmail_quote'>", "<div class='x_gmail_quote other'>", "<div id='divRplyFwdMsg'>",
    "<hr id=x_appendonsend>", "<pre>", "</pre>", "<pre/>", "<listing>", "</listing>",
    "<template>", "</template>", "<template/>", "<style>p {}</style>", "<style/>",
    "<script>1</script>", "<script/>", "<!-- c -->", "<!DOCTYPE html>", "<?xml x?>",
    "text", "five stars", " ", "\n", "  \n  ", "\t", "\r", "\f", "&amp;", "&nbsp;", "&#10;",
    "&#13;", "AT&T", "日本", "語", "\xa0", "\u3000", "---------- Forwarded message ---------",
    "On Mon, Jan 1, 2024 Sam <s@x.example> wrote:", "<title>t</title>", "<p", "</", "<",
    "<img alt='a\tb'>", "<img alt='x\n y'>", "<img alt='p  q'>", "&#1;", "&#26085;", "\ue000",
    "\x00", "\xa0\n", "\v", "<P>", "<p/>", "</img>", "</br >", "<td>cell text</TD>",
    "<p style='x'>whole</p>", "<br>after</br>", "<li>item</li >", "<![x", "</ x>", "a < b",
    "<p title='x < y &amp'>", "<!-- a < b -->", "<style>a < b</style>", "<img alt='</ &lt'>",
    "<<", "<1", "&amp<", "&lt", "<!x>", "<a href=x< y>", "日 < 語",
]  # fmt: skip


@pytest.mark.parametrize(("strip_quotes", "forward"), [(False, False), (True, False), (True, True)])
def test_fused_rendering_gives_the_stdlib_parsers_text(strip_quotes: bool, forward: bool) -> None:
    rng = random.Random(7)
    fused = handed_over = 0
    for _ in range(1500):
        html = "".join(rng.choice(_RENDER_PIECES) for _ in range(rng.randint(0, 40)))
        expected = _stdlib_text(html, strip_quotes=strip_quotes, forward=forward)
        assert html_to_text(html, strip_quotes=strip_quotes, forward=forward) == expected, html
        if _render_plain(_defuse(html), strip_quotes=strip_quotes, forward=forward) is not None:
            fused += 1
            handed_over += any(tag in html for tag in ("<blockquote", "<pre>", "mailto:", "<templ"))
    # Both ways through `_render_plain` are taken often: on its own and handing over.
    assert fused > 500
    assert handed_over > 250


def test_fused_rendering_of_the_benchmark_message() -> None:
    html = _bench_html()
    expected = _stdlib_text(html, strip_quotes=True, forward=False)
    assert _render_plain(_defuse(html), strip_quotes=True, forward=False) == expected


@pytest.mark.parametrize(
    "html",
    [
        "<p>fine</p><![CDATA[x]]>",  # markup outside the plain subset, at the end
        "<p>fine</p><a b='c'd='e'>x</a>",
        "<p>fine</p><title>t</title>",
        "<p>fine</p><script>a = '</b>';</script>",
        "<p>fine</p><blockquote>x</blockquote><a b=c=d>y</a>",  # after handing over
    ],
)
def test_fused_rendering_gives_up_where_the_plain_subset_ends(html: str) -> None:
    assert _render_plain(_defuse(html), strip_quotes=True, forward=False) is None
    expected = _stdlib_text(html, strip_quotes=True, forward=False)
    assert html_to_text(html, strip_quotes=True) == expected


@pytest.mark.parametrize(
    "html",
    [
        "<p>a<p/>b</p>c",  # a self-closing start tag: its end tag closes the outer element
        "<div>x<div/>y</div>z",
        "<P style='x'>t</p><B>u</b>",
        "<br>x</br>y<img alt=z>w</img>",
        "<style>a</style>shown<style>b</style>",
        "<td>a</td><td>&amp;b</td>",
        "<li>x</li ><li></li>",
    ],
)
def test_elements_holding_only_text_render_as_the_stdlib_parser_reads_them(html: str) -> None:
    expected = _stdlib_text(html, strip_quotes=True, forward=False)
    assert _render_plain(_defuse(html), strip_quotes=True, forward=False) == expected


def test_a_less_than_sign_that_opens_no_tag_is_text_on_the_fast_path() -> None:
    # Outlook's <![if !supportLists]>, a bare `<`, a `</` without a name, `<` after the last `>`.
    html = "<p>1 < 2 <<![if !supportLists]>item<![endif]></p></ x>tail &amp< <b"
    expected = _stdlib_text(html, strip_quotes=True, forward=False)
    assert _render_plain(html, strip_quotes=True, forward=False) == expected
    assert html_to_text(html, strip_quotes=True) == expected
