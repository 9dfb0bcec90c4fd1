"""The plugin's few lines of style and script, served from its own routes
(``/visit/radnet.css``, ``/visit/radnet.js``): the site's content security policy
allows only files of this site, and a plugin has no folder under ``/static``."""

STYLE = """\
/* radnet_icode: the I-Code form, the visit banner and the printed Portal Pass */
.icode-input { font-family: "Courier New", Courier, monospace; font-size: 1.25rem; letter-spacing: .1em;
  text-transform: uppercase; }
.icode-box h2 { font-size: 1.15rem; margin: 0 0 .25rem; }
.icode-box { margin-top: 1.25rem; padding-top: 1rem; border-top: 1px solid #dde2e8; }
.visit-facts { margin: 0; overflow-wrap: anywhere; }
.visit-next { display: flex; flex-direction: column; gap: .5rem; }
.visit-next form { margin: 0; }
.visit-list { list-style: none; margin: 0; padding: 0; display: flex; flex-direction: column; gap: .75rem; }
.visit-list > li { border-top: 1px solid #dde2e8; padding-top: .75rem; overflow-wrap: anywhere; }
.visit-list form { margin: .5rem 0 0; display: flex; flex-wrap: wrap; align-items: center; gap: .5rem; }
.visit-list select { width: auto; }
.code-state-active { background: #e3f2e8; color: #14532d; }
.code-state-expired { background: #fff3d1; color: #5c4300; }
.code-state-revoked { background: #eceff3; color: #3d4551; }
.help-phone { font-size: 1.15rem; font-weight: 600; }
.slip { max-width: 40rem; margin: 0 auto; padding: 1.5rem; background: #fff; }
.slip h1 { margin: 0 0 .25rem; }
.slip-code { font-family: "Courier New", Courier, monospace; font-size: clamp(1.25rem, 6.5vw, 2rem); font-weight: 700;
  letter-spacing: .08em; white-space: nowrap; border: 3px solid #1b1f24; border-radius: .5rem; padding: .5rem .75rem;
  display: inline-block; margin: .5rem 0; }
.slip ol { padding-left: 1.25rem; }
.slip-tools { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: center; margin: 0 0 1rem; }
@media print {
  .slip-tools, .no-print { display: none !important; }
  .slip { padding: 0; max-width: none; }
  body { background: #fff; }
}
"""

SCRIPT = """\
// the Portal Pass: a button that opens the browser's print dialogue
document.querySelectorAll("[data-print]").forEach(function (button) {
  button.hidden = false;
  button.addEventListener("click", function () { window.print(); });
});
"""
