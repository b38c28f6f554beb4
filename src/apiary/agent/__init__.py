"""apiary.agent"""
