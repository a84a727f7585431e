"""Markup a model could be made to write (a prompt injection in a pasted text, say) to attack the owner's
browser: scripts, handlers, script URLs, frames, styles, and an image that would tell a stranger the
reply was read."""

HOSTILE = (
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    "[click](javascript:alert(3))",
    '<a href="javascript:alert(4)">x</a>',
    "<svg onload=alert(5)>",
    '<iframe src="javascript:alert(6)"></iframe>',
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCg3KTwvc2NyaXB0Pg==)",
    "![tracker](https://example.com/pixel.png)",
    '<div style="background:url(javascript:alert(8))">x</div>',
    "[x](JaVaScRiPt:alert(9))",
    "<a href='&#106;avascript:alert(10)'>x</a>",
    '<form action="https://example.com"><button formaction="javascript:alert(11)">go</button></form>',
)
