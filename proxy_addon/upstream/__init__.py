"""Everything that talks to the platform: the token endpoint client, the replay
sender and the classification of the platform's error answers.
"""
