import { api } from "./app.js";

const form = document.getElementById("login");
const error = document.getElementById("login-error");

function safeNext() {
  const next = new URLSearchParams(location.search).get("next") || "/fleet";
  // Only same-site paths: never bounce a user to another origin.
  return next.startsWith("/") && !next.startsWith("//") ? next : "/fleet";
}

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  error.textContent = "";
  const data = new FormData(form);
  try {
    await api.post("/api/auth/login", { username: data.get("username"), password: data.get("password") });
    location.assign(safeNext());
  } catch (err) {
    error.textContent = err.status === 401 ? "Wrong user or password." : `Sign-in failed (${err.message}).`;
  }
});
