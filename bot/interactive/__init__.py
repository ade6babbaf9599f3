"""The interactive Slack bot: Socket Mode, the slash command, alert buttons and the App Home.

    socket.py     the Socket Mode connection: acknowledges every envelope, then hands it on
    service.py    what the daemon starts: routes envelopes to commands, actions and the home
    commands.py   the slash command: parse the text, build the answer from history, render
    answers.py    pure builders of the answers' figures (from compute, like the digests)
    match.py      forgiving name matching (case, prefix) that shows ambiguity, never guesses
    actions.py    alert buttons: who may act, acknowledge / snooze / unsnooze, message edits
    home.py       the App Home view
    slack_api.py  the Web API calls the bot makes (chat.update, views.publish, members, ...)
"""
