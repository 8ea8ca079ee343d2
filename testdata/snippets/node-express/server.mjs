// The app around voice-token.mjs, for snippets_test.go: the X-Test-User
// header stands in for the app's own session (req.user), and the port is
// printed once the server listens.
import express from "express";
import { voiceTokenRoute } from "./voice-token.mjs";

const app = express();
app.use((req, _res, next) => {
  const id = req.get("X-Test-User");
  if (id) req.user = { id };
  next();
});
app.use(voiceTokenRoute);

const server = app.listen(0, "127.0.0.1", () => {
  console.log(`listening ${server.address().port}`);
});
process.on("SIGTERM", () => server.close());
