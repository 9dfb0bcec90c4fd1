// The copy buttons of a new share: put the link or the password on the clipboard and say so.
// Without this script the buttons stay hidden and the fields can still be selected and copied.
const status = document.getElementById("copy-status");

for (const button of document.querySelectorAll("[data-copy]")) {
  const field = document.getElementById(button.dataset.copy);
  button.hidden = false;
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(field.value);
      status.textContent = status.dataset.copied;
    } catch {
      field.focus();  // no clipboard here (an old browser, or permission refused): select it instead
      field.select();
      status.textContent = status.dataset.select;
    }
  });
}
