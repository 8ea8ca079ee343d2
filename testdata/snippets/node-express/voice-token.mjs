// GET /api/voice-token: a short-lived token that lets the signed-in user open
// one dgrelay session. The relay runs with the same JWT_SECRET (32+ bytes).
//
//   app.use(session(...));          // your session middleware: it sets req.user
//   app.use(passport.session());
//   app.use(voiceTokenRoute);       // mounted after it, so only signed-in users get tokens
import express from "express";
import jwt from "jsonwebtoken";

export const voiceTokenRoute = express.Router();

voiceTokenRoute.get("/api/voice-token", (req, res) => {
  if (!req.user) {
    return res.status(401).json({ error: "sign in first" });
  }
  // sub is the user's identity in the relay's logs and per-user limits.
  // 60 s is enough: the relay checks exp once, when the socket opens.
  const token = jwt.sign({ sub: String(req.user.id) }, process.env.JWT_SECRET, {
    algorithm: "HS256",
    expiresIn: "60s",
  });
  res.set("Cache-Control", "no-store").json({ token });
});
