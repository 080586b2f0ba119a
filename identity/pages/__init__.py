"""Server-rendered pages for people: sign-in, registration, consent and their account."""
